// Whether a FAISS index keeps its vectors exactly (so the index pages need not store them a
// second time): FAISS's C API has no cast for HNSW indexes, hence this C++.
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>

extern "C" bool semantic_index_stores_exact_vectors(const faiss::Index* index) {
    if (dynamic_cast<const faiss::IndexFlat*>(index) != nullptr) {
        return true;
    }
    auto hnsw = dynamic_cast<const faiss::IndexHNSW*>(index);
    return hnsw != nullptr && dynamic_cast<const faiss::IndexFlat*>(hnsw->storage) != nullptr;
}

// Filling: a build hands its vectors to the index's flat storage while it scans the table,
// then links them into the HNSW graph in one call (FAISS links a graph's upper layers before
// its bottom layer within a call), without a second copy of the vectors alive. FAISS's own
// IndexHNSW::add copies what it is given into the storage first; the storage below takes the
// vectors it already holds as added instead.
#include <faiss/impl/FaissAssert.h>

#include <cstdio>
#include <cstring>

namespace {

struct FilledFlat : faiss::IndexFlat {
    FilledFlat(faiss::idx_t d, faiss::MetricType metric) : faiss::IndexFlat(d, metric) {}
    // Vectors in `codes` after the first `ntotal`, not yet added.
    faiss::idx_t filled = 0;
    void add(faiss::idx_t n, const float* x) override {
        if (n == filled && x == get_xb() + ntotal * d) {
            ntotal += n;
            filled = 0;
            return;
        }
        faiss::IndexFlat::add(n, x);
    }
};

// Room for `bytes` in a storage's codes, so that filling them does not copy them as they grow.
void reserve(faiss::MaybeOwnedVector<uint8_t>& codes, size_t bytes) {
    codes.owned_data.reserve(bytes);
    const uint8_t* none = nullptr;
    codes.insert(codes.owned_data.cend(), none, none); // resyncs its cached data pointer
}

int failed(const std::exception& e, char* error, size_t error_len) {
    std::snprintf(error, error_len, "%s", e.what());
    return -1;
}

} // namespace

// Makes an empty HNSW index over flat storage, or a flat index, ready to be filled with about
// `expected` vectors: 0 done, 1 not such an index (the caller adds as usual), -1 failed.
extern "C" int semantic_index_begin_filling(
        faiss::Index* index, int64_t expected, char* error, size_t error_len) {
    try {
        size_t reserve = static_cast<size_t>(expected > 0 ? expected : 0);
        if (auto hnsw = dynamic_cast<faiss::IndexHNSW*>(index)) {
            auto flat = dynamic_cast<faiss::IndexFlat*>(hnsw->storage);
            if (flat == nullptr || hnsw->ntotal != 0 || !hnsw->own_fields) {
                return 1;
            }
            auto filled = new FilledFlat(flat->d, flat->metric_type);
            filled->metric_arg = flat->metric_arg;
            ::reserve(filled->codes, reserve * filled->code_size);
            delete hnsw->storage;
            hnsw->storage = filled;
            return 0;
        }
        if (auto flat = dynamic_cast<faiss::IndexFlat*>(index)) {
            ::reserve(flat->codes, (static_cast<size_t>(flat->ntotal) + reserve) * flat->code_size);
            return 0;
        }
        return 1;
    } catch (const std::exception& e) {
        return failed(e, error, error_len);
    }
}

// Hands `n` vectors to an index made ready by semantic_index_begin_filling: 0 done, -1 failed.
extern "C" int semantic_index_fill(
        faiss::Index* index, const float* x, int64_t n, char* error, size_t error_len) {
    try {
        if (auto hnsw = dynamic_cast<faiss::IndexHNSW*>(index)) {
            auto filled = dynamic_cast<FilledFlat*>(hnsw->storage);
            FAISS_THROW_IF_NOT_MSG(filled != nullptr, "this index is not being filled");
            auto bytes = reinterpret_cast<const uint8_t*>(x);
            filled->codes.insert(
                    filled->codes.owned_data.cend(), bytes, bytes + n * filled->code_size);
            filled->filled += n;
            return 0;
        }
        index->add(n, x);
        return 0;
    } catch (const std::exception& e) {
        return failed(e, error, error_len);
    }
}

// Links the vectors handed over since the last link into the graph (a flat index has none
// pending): 0 done, -1 failed (FAISS stopped for an interrupt, for one).
extern "C" int semantic_index_link_filled(faiss::Index* index, char* error, size_t error_len) {
    try {
        auto hnsw = dynamic_cast<faiss::IndexHNSW*>(index);
        auto filled = hnsw == nullptr ? nullptr : dynamic_cast<FilledFlat*>(hnsw->storage);
        if (filled == nullptr || filled->filled == 0) {
            return 0;
        }
        hnsw->add(filled->filled, filled->get_xb() + filled->ntotal * filled->d);
        return 0;
    } catch (const std::exception& e) {
        return failed(e, error, error_len);
    }
}
