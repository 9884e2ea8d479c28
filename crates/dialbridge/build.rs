//! Links gperftools' thread-caching malloc (Debian's `libtcmalloc-minimal4`) into the binary
//! when the library is installed, so that every allocation of the process (Rust's, SQLite's,
//! OpenSSL's) goes through it instead of glibc's malloc. Without it the binary is built on
//! glibc's malloc and says so in a build warning; `DIALBRIDGE_ALLOCATOR=system` at build time
//! asks for glibc's malloc explicitly. Why: `docs/ARCHITECTURE.md`, "Memory allocator".
//!
//! The library is linked by its runtime file name (`libtcmalloc_minimal.so.4`), so the
//! runtime package is all a build needs (no `-dev` package). Linked ahead of libc, its
//! `malloc`/`free` are the ones the dynamic linker binds, as for an `LD_PRELOAD`.

use std::path::PathBuf;

const LIB: &str = "libtcmalloc_minimal.so.4";

fn main() {
    println!("cargo:rustc-check-cfg=cfg(dialbridge_tcmalloc)");
    println!("cargo:rerun-if-env-changed=DIALBRIDGE_ALLOCATOR");
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let choice = std::env::var("DIALBRIDGE_ALLOCATOR").unwrap_or_default();
    match choice.as_str() {
        "" | "tcmalloc" => {}
        "system" => return,
        other => panic!("DIALBRIDGE_ALLOCATOR={other:?}: expected \"tcmalloc\" or \"system\""),
    }
    if os != "linux" || env != "gnu" {
        return;
    }
    let dirs: Vec<PathBuf> = [
        format!("/usr/lib/{arch}-linux-gnu"),
        "/usr/lib64".to_owned(),
        "/usr/lib".to_owned(),
        "/usr/local/lib".to_owned(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .filter(|d| d.is_dir())
    .collect();
    match dirs.iter().find(|d| d.join(LIB).is_file()) {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-lib=dylib:+verbatim={LIB}");
            println!("cargo:rustc-cfg=dialbridge_tcmalloc");
        }
        None if choice == "tcmalloc" => {
            panic!("DIALBRIDGE_ALLOCATOR=tcmalloc but {LIB} is not installed (Debian: libtcmalloc-minimal4)")
        }
        None => println!(
            "cargo:warning=dialbridge is built on glibc's malloc: {LIB} not found \
             (Debian: apt-get install libtcmalloc-minimal4, then `touch crates/dialbridge/build.rs`); \
             see docs/ARCHITECTURE.md, \"Memory allocator\""
        ),
    }
}
