//! Compiles the C++ shims in cpp/ against the headers of the FAISS that faiss-sys built (its CMake
//! install root arrives as DEP_FAISS_C_ROOT, faiss-sys being `links = "faiss_c"`).
fn main() {
    let root = std::env::var("DEP_FAISS_C_ROOT")
        .expect("faiss-sys (feature \"static\") reports its install root");
    println!("cargo:rerun-if-changed=cpp");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .include(format!("{root}/include"))
        .file("cpp/interrupt.cpp")
        .file("cpp/search.cpp")
        .file("cpp/storage.cpp")
        .file("cpp/threads.cpp")
        .flag("-fopenmp")
        .compile("semantic_index_shims");
}
