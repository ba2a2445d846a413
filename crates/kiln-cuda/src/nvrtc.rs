//! NVRTC: finding it, compiling CUDA C to CUBIN for one architecture, and caching the result
//! on disk.
//!
//! NVRTC needs no GPU, so planning and compiling work on a machine without one. cudarc panics
//! when it cannot load a library and looks only in the loader's path, so [`Nvrtc::locate`]
//! finds the library itself, opens it (and its builtins) by full path with libloading, and
//! keeps them open: cudarc's later `dlopen("libnvrtc.so.13")` then finds the loaded library by
//! its soname instead of searching.
//!
//! Where NVRTC is looked for, in order: `KILN_NVRTC_DIR`; the pip wheels that `cargo xtask
//! fetch-nvrtc` unpacks into `~/.cache/kiln/nvrtc` (`$KILN_CACHE/nvrtc` where that is set); `/usr/local/cuda`. A folder qualifies when
//! it holds `libnvrtc.so.13` (in itself, `nvidia/cu13/lib`, `lib64`, `lib` or
//! `targets/x86_64-linux/lib`) and `cuda_fp16.h` (in `nvidia/cu13/include`, `include` or
//! `targets/x86_64-linux/include`).

use crate::error::{CudaError, Result};
use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The NVRTC library file name (CUDA 13).
pub const NVRTC_LIB: &str = "libnvrtc.so.13";
/// The prefix of the NVRTC builtins library that `libnvrtc` opens by name; the minor version
/// follows (`libnvrtc-builtins.so.13.0` in the 13.0 wheels, 13.1 in a 13.1 toolkit).
pub const NVRTC_BUILTINS_PREFIX: &str = "libnvrtc-builtins.so.13.";

/// The builtins library in `lib_dir`, if there is one (the `.alt` variant is not it).
fn builtins_in(lib_dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(lib_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(NVRTC_BUILTINS_PREFIX)))
        .collect();
    found.sort();
    found.pop()
}

/// A located and loaded NVRTC.
#[derive(Debug)]
pub struct Nvrtc {
    lib_dir: PathBuf,
    include_dir: PathBuf,
    version: (i32, i32),
    cache_dir: Option<PathBuf>,
}

/// A compiled kernel image for one architecture.
#[derive(Clone, Debug)]
pub struct Cubin {
    /// The ELF image.
    pub image: Vec<u8>,
    /// The target, such as `sm_90`.
    pub arch: String,
    /// Whether it came from the disk cache.
    pub cached: bool,
    /// NVRTC's log (warnings), empty when it came from the cache.
    pub log: String,
}

impl Cubin {
    /// Whether the image defines a global function of this name (a kernel's symbol appears
    /// in the ELF string table).
    pub fn has_kernel(&self, name: &str) -> bool {
        let needle: Vec<u8> = name.bytes().chain(std::iter::once(0)).collect();
        self.image.windows(needle.len()).enumerate().any(|(i, w)| w == needle && (i == 0 || self.image[i - 1] == 0))
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// `~/.cache/kiln` (or `KILN_CACHE`, as xtask reads it), where the NVRTC wheels and the CUBIN
/// cache live.
pub fn kiln_cache_dir() -> Option<PathBuf> {
    match std::env::var_os("KILN_CACHE").filter(|d| !d.is_empty()) {
        Some(d) => Some(PathBuf::from(d)),
        None => home().map(|h| h.join(".cache").join("kiln")),
    }
}

/// The folders NVRTC is looked for in, in order.
pub fn search_roots() -> Vec<PathBuf> {
    let mut roots = vec![];
    if let Some(d) = std::env::var_os("KILN_NVRTC_DIR").filter(|d| !d.is_empty()) {
        roots.push(PathBuf::from(d));
    }
    if let Some(c) = kiln_cache_dir() {
        roots.push(c.join("nvrtc"));
    }
    roots.push(PathBuf::from("/usr/local/cuda"));
    roots
}

fn first_with(root: &Path, subdirs: &[&str], file: &str) -> Option<PathBuf> {
    subdirs
        .iter()
        .map(|s| if s.is_empty() { root.to_path_buf() } else { root.join(s) })
        .find(|d| d.join(file).is_file())
}

/// The library and include folders under `root`, if it holds both.
fn layout(root: &Path) -> Option<(PathBuf, PathBuf)> {
    let lib = first_with(root, &["", "nvidia/cu13/lib", "lib64", "lib", "targets/x86_64-linux/lib"], NVRTC_LIB)?;
    let inc = first_with(root, &["nvidia/cu13/include", "include", "targets/x86_64-linux/include"], "cuda_fp16.h")?;
    Some((lib, inc))
}

/// The libraries opened by full path, kept open for the life of the process.
static LOADED: OnceLock<std::result::Result<(PathBuf, PathBuf, (i32, i32)), String>> = OnceLock::new();

fn load(lib_dir: &Path) -> std::result::Result<(i32, i32), String> {
    // The builtins first, so that libnvrtc's own dlopen of them by name finds them loaded;
    // where they are not beside it, libnvrtc finds them through the loader path itself.
    let libs: Vec<PathBuf> = builtins_in(lib_dir).into_iter().chain([lib_dir.join(NVRTC_LIB)]).collect();
    for path in libs {
        #[allow(unsafe_code)]
        // SAFETY: opening a shared library runs its initialisers, which for NVRTC have no
        // preconditions. RTLD_GLOBAL makes the soname visible to later dlopen calls by name.
        let lib = unsafe {
            libloading::os::unix::Library::open(
                Some(&path),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
        }
        .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        // Never unloaded: cudarc holds function pointers into it for the life of the process.
        std::mem::forget(lib);
    }
    let (mut major, mut minor) = (0, 0);
    #[allow(unsafe_code)]
    // SAFETY: libnvrtc.so.13 is loaded above, so cudarc's loader finds it without panicking;
    // the out-pointers are valid for writes.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcVersion failed: {r:?}"));
    }
    Ok((major, minor))
}

impl Nvrtc {
    /// Finds and loads NVRTC, with the CUBIN cache in `~/.cache/kiln/cubin`.
    pub fn locate() -> Result<Nvrtc> {
        let loaded = LOADED.get_or_init(|| {
            let roots = search_roots();
            let Some((lib, inc)) = roots.iter().find_map(|r| layout(r)) else {
                let tried: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
                return Err(format!("no {NVRTC_LIB} with cuda_fp16.h headers in {}", tried.join(", ")));
            };
            let version = load(&lib)?;
            Ok((lib, inc, version))
        });
        let (lib_dir, include_dir, version) = loaded.clone().map_err(CudaError::NoNvrtc)?;
        Ok(Nvrtc { lib_dir, include_dir, version, cache_dir: kiln_cache_dir().map(|c| c.join("cubin")) })
    }

    /// The same NVRTC with the CUBIN cache in `dir`, or with no cache.
    pub fn with_cache_dir(mut self, dir: Option<PathBuf>) -> Nvrtc {
        self.cache_dir = dir;
        self
    }

    /// The folder the library was loaded from.
    pub fn lib_dir(&self) -> &Path {
        &self.lib_dir
    }

    /// NVRTC's version, such as (13, 0).
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// The options every compile gets for `arch`. Hopper (`sm_90`) compiles for `sm_90a`, its
    /// architecture-specific features (`wgmma`) included: the CUBIN runs on every sm_90 GPU.
    pub fn options(&self, arch: &str) -> Vec<String> {
        let target = if arch == "sm_90" { "sm_90a" } else { arch };
        vec![format!("-arch={target}"), "-std=c++17".into(), format!("-I{}", self.include_dir.display())]
    }

    /// The cache key of a compile: a hash of the source, the options and NVRTC's version.
    pub fn cache_key(&self, source: &str, arch: &str) -> String {
        let mut h = Sha256::new();
        h.update(source.as_bytes());
        for o in self.options(arch) {
            // The include folder differs between machines and does not change the output.
            if !o.starts_with("-I") {
                h.update([0u8]);
                h.update(o.as_bytes());
            }
        }
        h.update(format!("nvrtc {}.{}", self.version.0, self.version.1).as_bytes());
        h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    /// Compiles `source` to a CUBIN for `arch` (such as `sm_90`), through the disk cache.
    /// `name` names the program in errors.
    pub fn compile(&self, name: &str, source: &str, arch: &str) -> Result<Cubin> {
        if !arch.starts_with("sm_") || arch.len() < 5 || !arch[3..].chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(CudaError::Invalid(format!("target architecture must look like sm_90, found {arch:?}")));
        }
        let path = self.cache_dir.as_ref().map(|d| d.join(format!("{}-{arch}.cubin", self.cache_key(source, arch))));
        if let Some(p) = &path {
            if let Ok(image) = std::fs::read(p) {
                if image.starts_with(b"\x7fELF") {
                    return Ok(Cubin { image, arch: arch.into(), cached: true, log: String::new() });
                }
            }
        }
        let (image, log) = self.compile_uncached(name, source, arch)?;
        if let (Some(p), Some(dir)) = (&path, &self.cache_dir) {
            std::fs::create_dir_all(dir).map_err(|source| CudaError::Cache { path: dir.clone(), source })?;
            // Write then rename, so that a concurrent reader never sees half a file. The
            // temporary name is this write's own: threads of one process (the conformance
            // runner's jobs) compiling the same source at once took each other's file away.
            static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = p.with_extension(format!("tmp{}-{n}", std::process::id()));
            std::fs::write(&tmp, &image).map_err(|source| CudaError::Cache { path: tmp.clone(), source })?;
            std::fs::rename(&tmp, p).map_err(|source| CudaError::Cache { path: p.clone(), source })?;
        }
        Ok(Cubin { image, arch: arch.into(), cached: false, log })
    }

    fn compile_uncached(&self, name: &str, source: &str, arch: &str) -> Result<(Vec<u8>, String)> {
        use cudarc::nvrtc::{result, sys};
        let fail = |log: String| CudaError::Compile { name: name.into(), arch: arch.into(), log };
        let src = CString::new(source).map_err(|_| fail("source holds a NUL byte".into()))?;
        let cname = CString::new(format!("{name}.cu")).map_err(|_| fail("name holds a NUL byte".into()))?;
        let prog = result::create_program(&src, Some(&cname)).map_err(|e| fail(e.to_string()))?;
        let opts = self.options(arch);
        #[allow(unsafe_code)]
        // SAFETY: `prog` is a live program made above and destroyed once below; the log and
        // CUBIN buffers are sized by NVRTC's own size queries.
        let out = unsafe {
            let compiled = result::compile_program(prog, &opts);
            let log = result::get_program_log(prog)
                .map(|l| {
                    let bytes: Vec<u8> = l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                    String::from_utf8_lossy(&bytes).trim().to_string()
                })
                .unwrap_or_default();
            let image = match compiled {
                Err(e) => Err(if log.is_empty() { e.to_string() } else { log.clone() }),
                Ok(()) => {
                    let mut size = 0usize;
                    let r = sys::nvrtcGetCUBINSize(prog, &mut size);
                    if r != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
                        Err(format!("no CUBIN ({r:?}); is {arch} a real architecture?"))
                    } else {
                        let mut image = vec![0u8; size];
                        let r = sys::nvrtcGetCUBIN(prog, image.as_mut_ptr().cast());
                        if r == sys::nvrtcResult::NVRTC_SUCCESS {
                            Ok(image)
                        } else {
                            Err(format!("nvrtcGetCUBIN failed: {r:?}"))
                        }
                    }
                }
            };
            let _ = result::destroy_program(prog);
            image.map(|i| (i, log))
        };
        out.map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC, or `None` where it is absent outside CI (in CI its absence fails the test).
    fn nvrtc() -> Option<Nvrtc> {
        match Nvrtc::locate() {
            Ok(n) => Some(n),
            Err(e) if std::env::var_os("CI").is_some_and(|v| v == "true") => panic!("CI=true and {e}"),
            Err(e) => {
                eprintln!("skipped: {e}");
                None
            }
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-cuda-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn layout_needs_both_library_and_headers() {
        let root = scratch("layout");
        assert_eq!(layout(&root), None);
        std::fs::create_dir_all(root.join("nvidia/cu13/lib")).unwrap();
        std::fs::write(root.join("nvidia/cu13/lib").join(NVRTC_LIB), b"").unwrap();
        assert_eq!(layout(&root), None, "a library without headers is not enough");
        std::fs::create_dir_all(root.join("include")).unwrap();
        std::fs::write(root.join("include/cuda_fp16.h"), b"").unwrap();
        assert_eq!(layout(&root), Some((root.join("nvidia/cu13/lib"), root.join("include"))));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn builtins_are_found_whatever_the_minor_version() {
        let dir = scratch("builtins");
        assert_eq!(builtins_in(&dir), None);
        std::fs::write(dir.join("libnvrtc-builtins.alt.so.13.0"), b"").unwrap();
        assert_eq!(builtins_in(&dir), None, "the .alt variant is not the one libnvrtc opens");
        for f in ["libnvrtc-builtins.so.13.1", "libnvrtc-builtins.so.13.1.80"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        assert_eq!(builtins_in(&dir), Some(dir.join("libnvrtc-builtins.so.13.1.80")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compile_errors_carry_the_log_and_bad_archs_are_refused() {
        let Some(nv) = nvrtc() else { return };
        let nv = nv.with_cache_dir(None);
        let err =
            nv.compile("broken", "extern \"C\" __global__ void k() { undeclared_thing(); }", "sm_90").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("NVRTC failed to compile broken for sm_90"), "{msg}");
        assert!(msg.contains("undeclared_thing"), "{msg}");
        for bad in ["90", "sm_", "sm_9-0", "compute_90 -G"] {
            assert!(matches!(nv.compile("k", "", bad), Err(CudaError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn cubins_are_cached_by_source_and_arch() {
        let Some(nv) = nvrtc() else { return };
        let dir = scratch("cache");
        let nv = nv.with_cache_dir(Some(dir.clone()));
        // Hopper compiles with its architecture-specific features (wgmma); others as named.
        assert!(nv.options("sm_90").contains(&"-arch=sm_90a".to_string()));
        assert!(nv.options("sm_80").contains(&"-arch=sm_80".to_string()));
        let src = "extern \"C\" __global__ void twice(float* x) { x[threadIdx.x] *= 2.0f; }";
        let first = nv.compile("twice", src, "sm_80").unwrap();
        assert!(!first.cached && first.has_kernel("twice") && !first.has_kernel("twic"));
        let again = nv.compile("twice", src, "sm_80").unwrap();
        assert!(again.cached);
        assert_eq!(again.image, first.image);
        // Another architecture or source is another entry.
        assert!(!nv.compile("twice", src, "sm_90").unwrap().cached);
        assert!(!nv.compile("twice", &format!("{src}\n"), "sm_80").unwrap().cached);
        assert_ne!(nv.cache_key(src, "sm_80"), nv.cache_key(src, "sm_90"));
        // A damaged entry is compiled again rather than handed to the driver.
        let entry = dir.join(format!("{}-sm_80.cubin", nv.cache_key(src, "sm_80")));
        std::fs::write(&entry, b"not an elf").unwrap();
        let fresh = nv.compile("twice", src, "sm_80").unwrap();
        assert!(!fresh.cached);
        assert_eq!(std::fs::read(&entry).unwrap(), first.image);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn threads_compiling_one_source_share_the_cache_safely() {
        let Some(nv) = nvrtc() else { return };
        let dir = scratch("threads");
        let nv = nv.with_cache_dir(Some(dir.clone()));
        let src = "extern \"C\" __global__ void thrice(float* x) { x[threadIdx.x] *= 3.0f; }";
        let images: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..6).map(|_| s.spawn(|| nv.compile("thrice", src, "sm_80").unwrap().image)).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(images.windows(2).all(|w| w[0] == w[1]));
        assert!(nv.compile("thrice", src, "sm_80").unwrap().cached);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "one entry and no temporary files: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
