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
