//! Minimal writer of NumPy `.npy` files (format 1.0, little-endian float32, C order).

use std::io::Write;
use std::path::Path;
use unicorn_ir::output::{Access, Output, OutputError};

/// Write `data` as a `shape` array to `path`, which may not be any of `inputs` (see [`unicorn_ir::output`]: a
/// regular file is replaced only when complete; /dev/null or a FIFO is written in place).
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32], inputs: &[&Path]) -> Result<(), OutputError> {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_str}, }}");
    // magic (6) + version (2) + header length (2) + dict + '\n' must be a multiple of 64.
    let total = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    dict.push('\n');
    let mut f = Output::create(path, inputs, Access::Stream, "an .npy array")?;
    let io = |error| OutputError::Io { path: path.to_path_buf(), error };
    f.write_all(b"\x93NUMPY\x01\x00").map_err(io)?;
    f.write_all(&(dict.len() as u16).to_le_bytes()).map_err(io)?;
    f.write_all(dict.as_bytes()).map_err(io)?;
    for v in data {
        f.write_all(&v.to_le_bytes()).map_err(io)?;
    }
    f.commit()
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_is_padded_to_64_bytes_and_data_follows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        super::write_f32(&p, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[]).unwrap();
        let b = std::fs::read(&p).unwrap();
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(header.contains("'shape': (2, 3)"), "{header}");
        assert_eq!(b.len(), 10 + hlen + 24);
        assert_eq!(f32::from_le_bytes(b[10 + hlen + 20..].try_into().unwrap()), 6.0);
    }
}
