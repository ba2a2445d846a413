//! `cargo xtask fetch-nvrtc`: NVRTC for machines without a CUDA toolkit.
//!
//! Downloads the pip wheels of NVRTC (the library), of the CUDA runtime (for headers such as
//! `cuda_fp16.h`) and of the CUDA C runtime headers (`crt/`, which `mma.h` includes) once, and unpacks them into `~/.cache/kiln/nvrtc`, where kiln-cuda looks for
//! NVRTC. NVRTC needs no GPU, so CI compiles every kernel with it.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The wheels, pinned: NVRTC 13.0 matches cudarc's `cuda-13000` bindings.
pub const WHEELS: [&str; 3] =
    ["nvidia-cuda-nvrtc==13.0.88", "nvidia-cuda-runtime==13.0.96", "nvidia-cuda-crt==13.0.88"];

/// Makes sure the wheels are unpacked; returns the folder kiln-cuda will find them in.
pub fn fetch() -> Result<PathBuf> {
    let root = crate::data::cache_dir()?.join("nvrtc");
    let lib = root.join("nvidia/cu13/lib/libnvrtc.so.13");
    let header = root.join("nvidia/cu13/include/cuda_fp16.h");
    let crt = root.join("nvidia/cu13/include/crt/mma.h");
    if lib.is_file() && header.is_file() && crt.is_file() {
        return Ok(root);
    }
    let wheels = root.join("wheels");
    std::fs::create_dir_all(&wheels).with_context(|| format!("creating {}", wheels.display()))?;
    eprintln!("downloading {} into {}", WHEELS.join(" and "), wheels.display());
    let python = if Command::new("python3").arg("--version").output().is_ok() { "python3" } else { "python" };
    let status = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--platform", "manylinux2014_x86_64"])
        .args(WHEELS)
        .arg("-d")
        .arg(&wheels)
        .status()
        .context("running pip download")?;
    if !status.success() {
        bail!("pip download of {} failed", WHEELS.join(" "));
    }
    for entry in std::fs::read_dir(&wheels)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "whl") {
            unpack(&path, &root)?;
        }
    }
    if !lib.is_file() || !header.is_file() || !crt.is_file() {
        bail!(
            "the wheels in {} hold no {}, {} or {}",
            wheels.display(),
            lib.display(),
            header.display(),
            crt.display()
        );
    }
    // The unpacked tree is all that is used; the wheels would double the disk it takes.
    std::fs::remove_dir_all(&wheels).with_context(|| format!("removing {}", wheels.display()))?;
    Ok(root)
}

/// Unpacks the `nvidia/` tree of a wheel into `root`.
fn unpack(wheel: &Path, root: &Path) -> Result<()> {
    eprintln!("unpacking {}", wheel.display());
    let f = std::fs::File::open(wheel)?;
    let mut zip = zip::ZipArchive::new(f).with_context(|| format!("opening {}", wheel.display()))?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let Some(rel) = entry.enclosed_name() else { continue };
        if !rel.starts_with("nvidia") || entry.is_dir() {
            continue;
        }
        let out = root.join(rel);
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Write then rename, so an interrupted unpack never leaves a truncated library.
        let mut tmp = out.clone().into_os_string();
        tmp.push(".part");
        let tmp = PathBuf::from(tmp);
        let mut w = std::fs::File::create(&tmp)?;
        std::io::copy(&mut entry, &mut w)?;
        std::fs::rename(&tmp, &out)?;
    }
    Ok(())
}

pub fn run() -> Result<()> {
    println!("{}", fetch()?.display());
    Ok(())
}
