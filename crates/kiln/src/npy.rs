//! Reading and writing NumPy `.npy` files, the exchange format of `kiln run`.

use crate::Error;
use kiln_ir::{bf16, f16, DType, Tensor};
use npyz::WriterBuilder;
use std::path::Path;

fn err(path: &Path, msg: impl ToString) -> Error {
    Error::Npy { path: path.display().to_string(), msg: msg.to_string() }
}

/// Reads a `.npy` file into a tensor. Fortran-order arrays are refused.
pub fn read(path: &Path) -> Result<Tensor, Error> {
    let bytes = std::fs::read(path).map_err(|e| err(path, e))?;
    read_bytes(&bytes).map_err(|m| err(path, m))
}

/// How deep brackets may nest in a header. npyz parses the header with a backtracking parser
/// whose time grows about 2.3 times per level (16 levels take 13 s); a plain array's header
/// nests 2 deep (`{'shape': (2, 3)}`) and a structured one 4 or 5, which is refused anyway.
const MAX_HEADER_NESTING: usize = 6;

/// Checks what npyz would trust before parsing the header: the header's length must fit in
/// the file (npyz allocates it first, up to 4 GiB for a version 2 header), and its brackets
/// must nest at most `MAX_HEADER_NESTING` deep. Found by fuzzing (`fuzz/`, target `read_npy`).
fn check_header(bytes: &[u8]) -> Result<(), String> {
    // A bad magic or version, or a file too short for the length field, is left to npyz.
    let (len, start) = match *bytes {
        [0x93, b'N', b'U', b'M', b'P', b'Y', 1, _, a, b, ..] => (u16::from_le_bytes([a, b]) as usize, 10),
        [0x93, b'N', b'U', b'M', b'P', b'Y', 2 | 3, _, a, b, c, d, ..] => {
            (u32::from_le_bytes([a, b, c, d]) as usize, 12)
        }
        _ => return Ok(()),
    };
    let Some(header) = bytes[start..].get(..len) else {
        return Err(format!(
            "header declares {len} bytes, the file has {} after the header length",
            bytes.len() - start
        ));
    };
    let (mut depth, mut deepest) = (0usize, 0usize);
    for &c in header {
        match c {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_HEADER_NESTING {
        return Err(format!("header nests brackets {deepest} deep, over the limit of {MAX_HEADER_NESTING}"));
    }
    check_shape(header)
}

/// npyz multiplies the header's dimensions (for the element count and the strides) without
/// checking for overflow, so the product of the nonzero dimensions must fit in a u64: with a
/// zero dimension the count is 0 but a stride may still overflow. Found by fuzzing.
fn check_shape(header: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(header);
    let Some(key) = text.find("'shape'").or_else(|| text.find("\"shape\"")) else { return Ok(()) };
    let rest = &text[key..];
    let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else { return Ok(()) };
    if close < open {
        return Ok(());
    }
    let mut product = 1u64;
    for d in rest[open + 1..close].split(',').map(str::trim).filter(|d| !d.is_empty()) {
        // Anything that is not a plain number is npyz's to refuse.
        let Ok(d) = d.parse::<u64>() else { return Ok(()) };
        if d != 0 {
            product = product.checked_mul(d).ok_or("the shape's element count overflows")?;
        }
    }
    Ok(())
}

/// Decodes `.npy` bytes.
pub fn read_bytes(bytes: &[u8]) -> Result<Tensor, String> {
    check_header(bytes)?;
    let npy = npyz::NpyFile::new(bytes).map_err(|e| e.to_string())?;
    if npy.order() == npyz::Order::Fortran {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} is too large")))
        .collect::<Result<_, _>>()?;
    let n = kiln_ir::checked_numel(&shape).ok_or("element count overflows")?;
    let npyz::DType::Plain(ty) = npy.dtype() else { return Err("structured arrays are not supported".into()) };
    // The header's shape must fit the bytes present before anything is allocated.
    let needed = n.checked_mul(ty.size_field() as usize).ok_or("byte size overflows")?;
    if needed > bytes.len() {
        return Err(format!("header declares {needed} bytes of data, the file has {}", bytes.len()));
    }
    let t = match (ty.type_char(), ty.size_field()) {
        (npyz::TypeChar::Float, 4) => Tensor::from_vec(shape, npy.into_vec::<f32>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Float, 8) => Tensor::from_vec(shape, npy.into_vec::<f64>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Float, 2) => Tensor::from_vec(shape, npy.into_vec::<f16>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Int, 1) => Tensor::from_vec(shape, npy.into_vec::<i8>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Int, 2) => Tensor::from_vec(shape, npy.into_vec::<i16>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Int, 4) => Tensor::from_vec(shape, npy.into_vec::<i32>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Int, 8) => Tensor::from_vec(shape, npy.into_vec::<i64>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Uint, 1) => Tensor::from_vec(shape, npy.into_vec::<u8>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Uint, 2) => Tensor::from_vec(shape, npy.into_vec::<u16>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Uint, 4) => Tensor::from_vec(shape, npy.into_vec::<u32>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Uint, 8) => Tensor::from_vec(shape, npy.into_vec::<u64>().map_err(|e| e.to_string())?),
        (npyz::TypeChar::Bool, 1) => Tensor::from_vec(shape, npy.into_vec::<bool>().map_err(|e| e.to_string())?),
        (c, s) => return Err(format!("dtype {c:?}{s} is not supported")),
    };
    t.map_err(|e| e.to_string())
}

/// Writes a tensor as a `.npy` file.
///
/// NumPy has no bf16, float8, float4 or E8M0 type, so those are written as float32 (exactly:
/// every value fits); the 4-bit integers are written as int8 and uint8.
pub fn write(path: &Path, t: &Tensor) -> Result<(), Error> {
    let bytes = write_bytes(t).map_err(|m| err(path, m))?;
    std::fs::write(path, bytes).map_err(|e| err(path, e))
}

/// Encodes a tensor as `.npy` bytes.
pub fn write_bytes(t: &Tensor) -> Result<Vec<u8>, String> {
    fn go<T: npyz::Serialize + npyz::AutoSerialize + Copy>(shape: &[usize], v: &[T]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(&mut out)
            .begin_nd()
            .map_err(|e| e.to_string())?;
        w.extend(v.iter().copied()).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
        Ok(out)
    }
    let s = t.shape();
    match t.dtype() {
        DType::F32 => go(s, t.as_slice::<f32>().map_err(|e| e.to_string())?),
        DType::F64 => go(s, t.as_slice::<f64>().map_err(|e| e.to_string())?),
        DType::F16 => go(s, t.as_slice::<f16>().map_err(|e| e.to_string())?),
        DType::BF16 => {
            let v: Vec<f32> = t.as_slice::<bf16>().map_err(|e| e.to_string())?.iter().map(|x| x.to_f32()).collect();
            go(s, &v)
        }
        DType::I8 => go(s, t.as_slice::<i8>().map_err(|e| e.to_string())?),
        DType::U8 => go(s, t.as_slice::<u8>().map_err(|e| e.to_string())?),
        DType::I16 => go(s, t.as_slice::<i16>().map_err(|e| e.to_string())?),
        DType::U16 => go(s, t.as_slice::<u16>().map_err(|e| e.to_string())?),
        DType::I32 => go(s, t.as_slice::<i32>().map_err(|e| e.to_string())?),
        DType::U32 => go(s, t.as_slice::<u32>().map_err(|e| e.to_string())?),
        DType::I64 => go(s, t.as_slice::<i64>().map_err(|e| e.to_string())?),
        DType::U64 => go(s, t.as_slice::<u64>().map_err(|e| e.to_string())?),
        DType::Bool => go(s, t.as_slice::<bool>().map_err(|e| e.to_string())?),
        DType::I4 => go(s, t.cast(DType::I8).as_slice::<i8>().map_err(|e| e.to_string())?),
        DType::U4 => go(s, t.cast(DType::U8).as_slice::<u8>().map_err(|e| e.to_string())?),
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ | DType::F4E2M1 | DType::F8E8M0 => {
            go(s, t.cast(DType::F32).as_slice::<f32>().map_err(|e| e.to_string())?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_dtype() {
        for d in DType::ALL {
            let t = Tensor::from_vec(vec![2, 3], (0..6).map(|x| x as f32 - 2.0).collect::<Vec<_>>()).unwrap().cast(d);
            let back = read_bytes(&write_bytes(&t).unwrap()).unwrap();
            let want = match d {
                DType::I4 => t.cast(DType::I8),
                DType::U4 => t.cast(DType::U8),
                d if d == DType::BF16 || d.is_low_precision_float() => t.cast(DType::F32),
                _ => t,
            };
            assert_eq!(back, want, "{d}");
        }
    }

    #[test]
    fn lying_header_is_refused() {
        let t = Tensor::from_vec(vec![4], vec![1.0f32; 4]).unwrap();
        let mut b = write_bytes(&t).unwrap();
        b.truncate(b.len() - 8);
        assert!(read_bytes(&b).is_err());
    }

    fn check_refused(bytes: &[u8], want: &str) {
        match read_bytes(bytes) {
            Ok(t) => panic!("read as {t:?}"),
            Err(e) => assert!(e.contains(want), "{e}"),
        }
    }

    /// A version 1 header; its brackets (and anything else) come from `dict`.
    fn npy_v1(dict: &str) -> Vec<u8> {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.extend_from_slice(&[0; 16]);
        b
    }

    /// Found by fuzzing: npyz's header parser backtracks exponentially in the nesting depth, so
    /// 100 brackets would hang the reader. The check refuses them before npyz parses anything.
    #[test]
    fn deeply_nested_header_is_refused() {
        let deep = format!("{{'descr': '<i8', 'fortran_order': False, {}'shape': (2,), }}\n", "[".repeat(100));
        check_refused(&npy_v1(&deep), "header nests brackets 102 deep, over the limit of 6");
        let ok = "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }\n";
        assert_eq!(read_bytes(&npy_v1(ok)).unwrap().shape(), &[2]);
    }

    /// npyz allocates the header's declared length before reading it: 4 GiB for this file.
    #[test]
    fn header_longer_than_file_is_refused() {
        let mut b = b"\x93NUMPY\x02\x00".to_vec();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(b"{'descr': '<f4'");
        check_refused(&b, "header declares 4294967295 bytes, the file has 15");
    }

    /// Found by fuzzing: npyz multiplies the dimensions unchecked, for the strides even when a
    /// zero dimension makes the element count 0.
    #[test]
    fn overflowing_shape_is_refused() {
        for shape in ["(4294967296, 4294967296, 2)", "(0, 4294967296, 4294967296)"] {
            let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
            check_refused(&npy_v1(&dict), "the shape's element count overflows");
        }
    }
}
