// Searches that skip the snapshot positions VACUUM marked dead: FAISS's IDSelector, passed
// through SearchParameters of the index's own kind (the C API of this FAISS build has no
// IDSelectorNot nor per-kind search parameters, hence this C++).
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/impl/IDSelector.h>

#include <cstring>
#include <exception>

// 0: searched; 1: this kind of index takes no selector (the caller filters itself);
// -1: FAISS failed, its message in `error`.
extern "C" int semantic_index_search_excluding(
        const faiss::Index* index,
        const float* query,
        int64_t k,
        int64_t ef_search,
        int64_t nprobe,
        const uint8_t* dead_bitmap,
        size_t dead_bitmap_bytes,
        float* distances,
        int64_t* labels,
        char* error,
        size_t error_len) {
    try {
        const faiss::Index* inner = index;
        while (auto pre = dynamic_cast<const faiss::IndexPreTransform*>(inner)) {
            inner = pre->index;
        }
        faiss::IDSelectorBitmap dead(dead_bitmap_bytes, dead_bitmap);
        faiss::IDSelectorNot live(&dead);
        faiss::SearchParametersHNSW hnsw;
        faiss::SearchParametersIVF ivf;
        faiss::SearchParameters flat;
        faiss::SearchParameters* params;
        if (dynamic_cast<const faiss::IndexHNSW*>(inner) != nullptr) {
            hnsw.efSearch = static_cast<int>(ef_search);
            params = &hnsw;
        } else if (dynamic_cast<const faiss::IndexIVF*>(inner) != nullptr) {
            ivf.nprobe = static_cast<size_t>(nprobe);
            params = &ivf;
        } else if (dynamic_cast<const faiss::IndexFlat*>(inner) != nullptr &&
                   (inner->metric_type == faiss::METRIC_L2 ||
                    inner->metric_type == faiss::METRIC_INNER_PRODUCT)) {
            // (FAISS's flat search under other metrics, L1, takes no selector.)
            params = &flat;
        } else {
            return 1;
        }
        params->sel = &live;
        // PreTransform wrappers hand parameters that are not their own to the inner index.
        index->search(1, query, k, distances, labels, params);
        return 0;
    } catch (const std::exception& e) {
        std::strncpy(error, e.what(), error_len - 1);
        error[error_len - 1] = '\0';
        return -1;
    }
}
