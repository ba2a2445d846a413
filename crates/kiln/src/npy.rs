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

/// Decodes `.npy` bytes.
pub fn read_bytes(bytes: &[u8]) -> Result<Tensor, String> {
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
}
