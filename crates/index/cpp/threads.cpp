// Starts libgomp's team for `threads` threads with a parallel region, so that the threads
// exist before FAISS's first parallel loop: the caller starts them with its signals blocked
// (src/threads.rs), and later regions of up to that size reuse them.
#include <omp.h>

extern "C" int semantic_index_start_omp_threads(int threads) {
    int started = 0;
#pragma omp parallel num_threads(threads) reduction(+ : started)
    started += 1; // a body the compiler keeps (an empty region is optimised away)
    return started;
}
