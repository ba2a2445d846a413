//! Decoding `TensorProto` into Kiln tensors, from every encoding ONNX allows, and reading
//! external data safely.

use crate::proto::{tensor_proto::DataLocation, TensorProto};
use crate::ImportError;
use kiln_ir::lowp::{F4E2M1, F8E4M3FN, F8E4M3FNUZ, F8E5M2, F8E5M2FNUZ, F8E8M0, I4, U4};
use kiln_ir::{bf16, checked_numel, f16, DType, Tensor, TensorData};
use std::path::{Component, Path};

/// The Kiln type of an ONNX `TensorProto.DataType` code, if Kiln supports it.
pub fn dtype_from_onnx(code: i32) -> Option<DType> {
    Some(match code {
        1 => DType::F32,
        2 => DType::U8,
        3 => DType::I8,
        4 => DType::U16,
        5 => DType::I16,
        6 => DType::I32,
        7 => DType::I64,
        9 => DType::Bool,
        10 => DType::F16,
        11 => DType::F64,
        12 => DType::U32,
        13 => DType::U64,
        16 => DType::BF16,
        17 => DType::F8E4M3FN,
        18 => DType::F8E4M3FNUZ,
        19 => DType::F8E5M2,
        20 => DType::F8E5M2FNUZ,
        21 => DType::U4,
        22 => DType::I4,
        23 => DType::F4E2M1,
        24 => DType::F8E8M0,
        _ => return None,
    })
}

/// The ONNX `TensorProto.DataType` code of a Kiln type.
pub fn dtype_to_onnx(d: DType) -> i32 {
    match d {
        DType::F32 => 1,
        DType::U8 => 2,
        DType::I8 => 3,
        DType::U16 => 4,
        DType::I16 => 5,
        DType::I32 => 6,
        DType::I64 => 7,
        DType::Bool => 9,
        DType::F16 => 10,
        DType::F64 => 11,
        DType::U32 => 12,
        DType::U64 => 13,
        DType::BF16 => 16,
        DType::F8E4M3FN => 17,
        DType::F8E4M3FNUZ => 18,
        DType::F8E5M2 => 19,
        DType::F8E5M2FNUZ => 20,
        DType::U4 => 21,
        DType::I4 => 22,
        DType::F4E2M1 => 23,
        DType::F8E8M0 => 24,
    }
}

/// A readable name for an ONNX data type code, for errors.
pub fn onnx_dtype_name(code: i32) -> String {
    crate::proto::tensor_proto::DataType::try_from(code)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| format!("unknown data type {code}"))
}

/// Decodes a tensor. `base_dir` is the model's directory, needed for external data; without it
/// external data is an error.
pub fn tensor_from_proto(t: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor, ImportError> {
    let err = |msg: String| ImportError::Tensor { name: t.name.clone(), msg };
    let dtype = dtype_from_onnx(t.data_type)
        .ok_or_else(|| err(format!("data type {} is not supported", onnx_dtype_name(t.data_type))))?;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(err(format!("negative dimension {d} in {:?}", t.dims)));
        }
        shape.push(usize::try_from(d).map_err(|_| err(format!("dimension {d} is too large")))?);
    }
    let n = checked_numel(&shape).ok_or_else(|| err(format!("element count of {:?} overflows", t.dims)))?;
    let bytes_needed = if is_packed_4bit(dtype) {
        n.div_ceil(2)
    } else {
        n.checked_mul(dtype.size()).ok_or_else(|| err(format!("byte size of {:?} overflows", t.dims)))?
    };

    let external;
    let raw: Option<&[u8]> = if t.data_location == DataLocation::External as i32 {
        let dir = base_dir.ok_or_else(|| err("external data needs the model's directory".into()))?;
        external = read_external(t, dir, bytes_needed)?;
        Some(&external)
    } else if !t.raw_data.is_empty() || n == 0 && no_typed_data(t) {
        Some(&t.raw_data)
    } else {
        None
    };

    let data = match raw {
        Some(raw) => {
            if raw.len() != bytes_needed {
                return Err(err(format!(
                    "raw_data holds {} bytes but shape {:?} of {} needs {bytes_needed}",
                    raw.len(),
                    t.dims,
                    dtype
                )));
            }
            decode_raw(dtype, raw, n)
        }
        None => decode_typed(t, dtype, n).map_err(err)?,
    };
    Tensor::new(shape, data).map_err(|e| err(e.to_string()))
}

fn no_typed_data(t: &TensorProto) -> bool {
    t.float_data.is_empty()
        && t.int32_data.is_empty()
        && t.int64_data.is_empty()
        && t.double_data.is_empty()
        && t.uint64_data.is_empty()
}

/// Whether ONNX stores the type two elements per byte, low nibble first.
fn is_packed_4bit(dtype: DType) -> bool {
    matches!(dtype, DType::U4 | DType::I4 | DType::F4E2M1)
}

/// `n` 4-bit elements from bytes holding two each, low nibble first (an odd count leaves the
/// last high nibble as padding).
fn unpack_4bit(bytes: impl Iterator<Item = u8>, n: usize) -> Vec<u8> {
    bytes.flat_map(|b| [b & 0xF, b >> 4]).take(n).collect()
}

/// Packs 4-bit elements two per byte, low nibble first, padding an odd count with 0.
fn pack_4bit(nibbles: impl Iterator<Item = u8>) -> Vec<u8> {
    let v: Vec<u8> = nibbles.collect();
    v.chunks(2).map(|c| (c[0] & 0xF) | c.get(1).map_or(0, |h| (h & 0xF) << 4)).collect()
}

/// Storage of a 4-bit type from its unpacked nibbles.
fn from_nibbles(dtype: DType, nib: Vec<u8>) -> TensorData {
    match dtype {
        DType::U4 => TensorData::U4(nib.into_iter().map(U4).collect()),
        DType::I4 => TensorData::I4(nib.into_iter().map(|x| I4::wrapping(x as i64)).collect()),
        _ => TensorData::F4E2M1(nib.into_iter().map(F4E2M1).collect()),
    }
}

/// Storage of a one-byte low-precision type from its bit patterns.
fn from_bytes(dtype: DType, b: impl Iterator<Item = u8>) -> TensorData {
    match dtype {
        DType::F8E4M3FN => TensorData::F8E4M3FN(b.map(F8E4M3FN).collect()),
        DType::F8E4M3FNUZ => TensorData::F8E4M3FNUZ(b.map(F8E4M3FNUZ).collect()),
        DType::F8E5M2 => TensorData::F8E5M2(b.map(F8E5M2).collect()),
        DType::F8E5M2FNUZ => TensorData::F8E5M2FNUZ(b.map(F8E5M2FNUZ).collect()),
        _ => TensorData::F8E8M0(b.map(F8E8M0).collect()),
    }
}

fn decode_raw(dtype: DType, raw: &[u8], n: usize) -> TensorData {
    fn le<const N: usize, T>(raw: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
        raw.chunks_exact(N).map(|c| f(c.try_into().expect("chunk of N bytes"))).collect()
    }
    match dtype {
        DType::F32 => TensorData::F32(le(raw, f32::from_le_bytes)),
        DType::F16 => TensorData::F16(le(raw, |b| f16::from_bits(u16::from_le_bytes(b)))),
        DType::BF16 => TensorData::BF16(le(raw, |b| bf16::from_bits(u16::from_le_bytes(b)))),
        DType::F64 => TensorData::F64(le(raw, f64::from_le_bytes)),
        DType::I8 => TensorData::I8(raw.iter().map(|&b| b as i8).collect()),
        DType::U8 => TensorData::U8(raw.to_vec()),
        DType::I16 => TensorData::I16(le(raw, i16::from_le_bytes)),
        DType::U16 => TensorData::U16(le(raw, u16::from_le_bytes)),
        DType::I32 => TensorData::I32(le(raw, i32::from_le_bytes)),
        DType::U32 => TensorData::U32(le(raw, u32::from_le_bytes)),
        DType::I64 => TensorData::I64(le(raw, i64::from_le_bytes)),
        DType::U64 => TensorData::U64(le(raw, u64::from_le_bytes)),
        DType::Bool => TensorData::Bool(raw.iter().map(|&b| b != 0).collect()),
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ | DType::F8E8M0 => {
            from_bytes(dtype, raw.iter().copied())
        }
        DType::U4 | DType::I4 | DType::F4E2M1 => from_nibbles(dtype, unpack_4bit(raw.iter().copied(), n)),
    }
}

fn decode_typed(t: &TensorProto, dtype: DType, n: usize) -> Result<TensorData, String> {
    fn check<T>(v: &[T], n: usize, field: &str) -> Result<(), String> {
        if v.len() != n {
            return Err(format!("{field} holds {} values but the shape needs {n}", v.len()));
        }
        Ok(())
    }
    Ok(match dtype {
        DType::F32 => {
            check(&t.float_data, n, "float_data")?;
            TensorData::F32(t.float_data.clone())
        }
        DType::F64 => {
            check(&t.double_data, n, "double_data")?;
            TensorData::F64(t.double_data.clone())
        }
        DType::I64 => {
            check(&t.int64_data, n, "int64_data")?;
            TensorData::I64(t.int64_data.clone())
        }
        DType::U32 | DType::U64 => {
            check(&t.uint64_data, n, "uint64_data")?;
            if dtype == DType::U32 {
                TensorData::U32(t.uint64_data.iter().map(|&x| x as u32).collect())
            } else {
                TensorData::U64(t.uint64_data.clone())
            }
        }
        // onnx.proto: 4-bit types pack two elements into the low byte of each int32_data entry.
        DType::U4 | DType::I4 | DType::F4E2M1 => {
            check(&t.int32_data, n.div_ceil(2), "int32_data")?;
            from_nibbles(dtype, unpack_4bit(t.int32_data.iter().map(|&x| x as u8), n))
        }
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ | DType::F8E8M0 => {
            check(&t.int32_data, n, "int32_data")?;
            from_bytes(dtype, t.int32_data.iter().map(|&x| x as u8))
        }
        _ => {
            check(&t.int32_data, n, "int32_data")?;
            let v = &t.int32_data;
            match dtype {
                DType::I32 => TensorData::I32(v.clone()),
                DType::I16 => TensorData::I16(v.iter().map(|&x| x as i16).collect()),
                DType::U16 => TensorData::U16(v.iter().map(|&x| x as u16).collect()),
                DType::I8 => TensorData::I8(v.iter().map(|&x| x as i8).collect()),
                DType::U8 => TensorData::U8(v.iter().map(|&x| x as u8).collect()),
                DType::Bool => TensorData::Bool(v.iter().map(|&x| x != 0).collect()),
                DType::F16 => TensorData::F16(v.iter().map(|&x| f16::from_bits(x as u16)).collect()),
                DType::BF16 => TensorData::BF16(v.iter().map(|&x| bf16::from_bits(x as u16)).collect()),
                _ => unreachable!("handled above"),
            }
        }
    })
}

/// Reads a tensor's external data, refusing any location that could leave `dir`.
fn read_external(t: &TensorProto, dir: &Path, bytes_needed: usize) -> Result<Vec<u8>, ImportError> {
    let err = |msg: String| ImportError::Tensor { name: t.name.clone(), msg };
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for kv in &t.external_data {
        match kv.key.as_str() {
            "location" => location = Some(kv.value.as_str()),
            "offset" => {
                offset =
                    kv.value.parse().map_err(|_| err(format!("external data offset '{}' is not a number", kv.value)))?
            }
            "length" => {
                length = Some(
                    kv.value
                        .parse::<u64>()
                        .map_err(|_| err(format!("external data length '{}' is not a number", kv.value)))?,
                )
            }
            _ => {}
        }
    }
    let location = location.ok_or_else(|| err("external data has no location".into()))?;
    let rel = Path::new(location);
    if rel.is_absolute() || location.starts_with('/') || location.starts_with('\\') {
        return Err(err(format!("external data location '{location}' is an absolute path")));
    }
    if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(err(format!("external data location '{location}' leaves the model's directory")));
    }
    let dir = dir.canonicalize().map_err(|e| err(format!("cannot resolve the model's directory: {e}")))?;
    let path = dir.join(rel).canonicalize().map_err(|e| err(format!("external data file '{location}': {e}")))?;
    if !path.starts_with(&dir) {
        return Err(err(format!("external data location '{location}' resolves outside the model's directory")));
    }
    let file_len = std::fs::metadata(&path).map_err(|e| err(format!("external data file '{location}': {e}")))?.len();
    let length = length.unwrap_or_else(|| file_len.saturating_sub(offset));
    if length != bytes_needed as u64 {
        return Err(err(format!(
            "external data length {length} does not match the {bytes_needed} bytes the shape needs"
        )));
    }
    let end = offset.checked_add(length).ok_or_else(|| err("external data range overflows".into()))?;
    if end > file_len {
        return Err(err(format!(
            "external data range {offset}..{end} is past the end of '{location}' ({file_len} bytes)"
        )));
    }
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(&path).map_err(|e| err(format!("external data file '{location}': {e}")))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| err(e.to_string()))?;
    let mut buf = vec![0u8; length as usize];
    f.read_exact(&mut buf).map_err(|e| err(e.to_string()))?;
    Ok(buf)
}

/// Encodes a tensor as a `TensorProto` with `raw_data` (used to write test data and models);
/// the 4-bit types are packed two per byte as ONNX stores them.
pub fn tensor_to_proto(name: &str, t: &Tensor) -> TensorProto {
    let mut raw = Vec::with_capacity(t.byte_size());
    match t.data() {
        TensorData::F32(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        TensorData::F16(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_bits().to_le_bytes())),
        TensorData::BF16(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_bits().to_le_bytes())),
        TensorData::F64(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        TensorData::I8(v) => raw.extend(v.iter().map(|&x| x as u8)),
        TensorData::U8(v) => raw.extend_from_slice(v),
        TensorData::I16(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        TensorData::U16(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        TensorData::I32(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        TensorData::U32(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        TensorData::I64(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        TensorData::U64(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        TensorData::Bool(v) => raw.extend(v.iter().map(|&x| x as u8)),
        TensorData::F8E4M3FN(v) => raw.extend(v.iter().map(|x| x.0)),
        TensorData::F8E4M3FNUZ(v) => raw.extend(v.iter().map(|x| x.0)),
        TensorData::F8E5M2(v) => raw.extend(v.iter().map(|x| x.0)),
        TensorData::F8E5M2FNUZ(v) => raw.extend(v.iter().map(|x| x.0)),
        TensorData::F8E8M0(v) => raw.extend(v.iter().map(|x| x.0)),
        TensorData::U4(v) => raw = pack_4bit(v.iter().map(|x| x.0)),
        TensorData::I4(v) => raw = pack_4bit(v.iter().map(|x| x.0 as u8)),
        TensorData::F4E2M1(v) => raw = pack_4bit(v.iter().map(|x| x.0)),
    }
    TensorProto {
        name: name.to_string(),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: dtype_to_onnx(t.dtype()),
        raw_data: raw,
        ..TensorProto::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `proto` and checks it against `expected`, then checks that encoding round-trips.
    fn check(proto: TensorProto, expected: &Tensor) {
        let t = tensor_from_proto(&proto, None).unwrap();
        assert_eq!(&t, expected);
        let back = tensor_from_proto(&tensor_to_proto("t", &t), None).unwrap();
        assert_eq!(&back, expected);
    }

    fn proto(code: i32, dims: &[i64]) -> TensorProto {
        TensorProto { name: "t".into(), data_type: code, dims: dims.to_vec(), ..TensorProto::default() }
    }

    #[test]
    fn four_bit_odd_lengths_raw_and_int32_data() {
        let want = Tensor::from_vec(vec![3], vec![I4(-1), I4(7), I4(-8)]).unwrap();
        check(TensorProto { raw_data: vec![0x7F, 0x08], ..proto(22, &[3]) }, &want);
        check(TensorProto { int32_data: vec![0x7F, 0x08], ..proto(22, &[3]) }, &want);
        assert_eq!(tensor_to_proto("t", &want).raw_data, [0x7F, 0x08]);
        let u = Tensor::from_vec(vec![1], vec![U4(13)]).unwrap();
        check(TensorProto { raw_data: vec![0x0D], ..proto(21, &[1]) }, &u);
        let f = Tensor::from_vec(vec![1, 5], [1, 2, 3, 0xF, 7].map(F4E2M1).to_vec()).unwrap();
        check(TensorProto { raw_data: vec![0x21, 0xF3, 0x07], ..proto(23, &[1, 5]) }, &f);
        let err = tensor_from_proto(&TensorProto { raw_data: vec![0x21], ..proto(23, &[3]) }, None).unwrap_err();
        assert!(err.to_string().contains("needs 2"), "{err}");
    }

    #[test]
    fn float8_raw_and_int32_data() {
        let want = Tensor::from_vec(vec![2], vec![F8E5M2(0x7B), F8E5M2(0x80)]).unwrap();
        check(TensorProto { raw_data: vec![0x7B, 0x80], ..proto(19, &[2]) }, &want);
        check(TensorProto { int32_data: vec![0x7B, 0x80], ..proto(19, &[2]) }, &want);
        let e = Tensor::from_vec(vec![1], vec![F8E8M0(127)]).unwrap();
        check(TensorProto { int32_data: vec![127], ..proto(24, &[1]) }, &e);
    }
}
