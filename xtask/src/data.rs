//! Test data fetched once into `~/.cache/kiln`: the ONNX backend test suite from the onnx wheel.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The onnx release whose backend tests are our conformance yardstick.
pub const ONNX_VERSION: &str = "1.19.1";

/// `~/.cache/kiln`, created if missing (`KILN_CACHE` overrides it).
pub fn cache_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("KILN_CACHE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache/kiln"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The suite's `onnx/backend/test/data` directory, downloading and unpacking the wheel first
/// if it is not cached.
pub fn onnx_test_data() -> Result<PathBuf> {
    let cache = cache_dir()?;
    let root = cache.join(format!("onnx-{ONNX_VERSION}"));
    let data = root.join("onnx/backend/test/data");
    if data.join("node").is_dir() {
        return Ok(data);
    }
    let wheel = find_wheel(&cache).map(Ok).unwrap_or_else(|| download_wheel(&cache))?;
    eprintln!("unpacking {}", wheel.display());
    let f = std::fs::File::open(&wheel)?;
    let mut zip = zip::ZipArchive::new(f).context("opening the onnx wheel")?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let Some(rel) = entry.enclosed_name() else { continue };
        if !rel.starts_with("onnx/backend/test/data") || entry.is_dir() {
            continue;
        }
        let out = root.join(rel);
        std::fs::create_dir_all(out.parent().expect("entry has a parent"))?;
        let mut w = std::fs::File::create(&out)?;
        std::io::copy(&mut entry, &mut w)?;
    }
    Ok(data)
}

fn find_wheel(cache: &Path) -> Option<PathBuf> {
    std::fs::read_dir(cache).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("onnx-{ONNX_VERSION}-")) && n.ends_with(".whl"))
    })
}

fn download_wheel(cache: &Path) -> Result<PathBuf> {
    eprintln!("downloading onnx {ONNX_VERSION} (for its backend test data) into {}", cache.display());
    let python = if Command::new("python3").arg("--version").output().is_ok() { "python3" } else { "python" };
    let status = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11"])
        .args(["--platform", "manylinux2014_x86_64"])
        .arg(format!("onnx=={ONNX_VERSION}"))
        .arg("-d")
        .arg(cache)
        .status()
        .context("running pip download")?;
    if !status.success() {
        bail!("pip download of onnx=={ONNX_VERSION} failed");
    }
    find_wheel(cache).context("pip download left no onnx wheel")
}
