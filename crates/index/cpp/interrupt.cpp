// FAISS polls faiss::InterruptCallback::instance during long loops (HNSW insertion, k-means,
// searches over many queries) and throws "computation interrupted" when it says so. FAISS's C
// API cannot install one, hence these few lines of C++: the callback asks Rust
// (semantic_index_interrupt_requested, see src/interrupt.rs).
#include <faiss/impl/AuxIndexStructures.h>

extern "C" bool semantic_index_interrupt_requested();

namespace {
struct AskRust : faiss::InterruptCallback {
    bool want_interrupt() override {
        return semantic_index_interrupt_requested();
    }
};
} // namespace

extern "C" void semantic_index_install_interrupt_callback() {
    faiss::InterruptCallback::instance.reset(new AskRust());
}
