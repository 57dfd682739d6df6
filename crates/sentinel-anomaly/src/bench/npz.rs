//! Reading ADBench `.npz` files as users have them: ADBench and the tools
//! around it write `X` and `y` with whatever NumPy element type the data came
//! in (`X` as float64, float32, int16, uint8…; `y` as int64, int32, bool or
//! float), so each array is read as any element type it may hold and
//! converted, rather than as the one type a first file happened to use.

use std::fs::File;
use std::path::Path;

use ndarray::{ArrayD, OwnedRepr};
use ndarray_npy::{NpzReader, ReadNpzError};

use super::{BenchError, Labelled, Result};
use crate::Matrix;

/// Reads the array `name` of `npz` as `f64`, trying each of the listed
/// element types in turn. A type that does not match fails on the array's
/// header, before its data is read, so the tries cost little. Gives the first
/// error (the `f64` attempt's, which names the type the file holds) when no
/// type matches.
macro_rules! read_as_f64 {
    ($npz:expr, $name:expr, $($element:ty => $convert:expr),+ $(,)?) => {{
        let mut first_error: Option<ReadNpzError> = None;
        let mut found = None;
        $(
            if found.is_none() {
                match $npz.by_name::<OwnedRepr<$element>, ndarray::IxDyn>($name) {
                    Ok(array) => found = Some(array.mapv($convert)),
                    Err(error) => { first_error.get_or_insert(error); }
                }
            }
        )+
        found.ok_or_else(|| first_error.map_or_else(String::new, |error| error.to_string()))
    }};
}

/// Reads `X` (any integer, unsigned or floating-point type) and `y` (any
/// integer, bool or floating-point type; non-zero is an anomaly) of an
/// ADBench `.npz` file.
pub fn load_npz(path: &Path) -> Result<Labelled> {
    let data_error = |message: String| BenchError::Data { path: path.to_owned(), message };
    let file = File::open(path)?;
    let mut npz = NpzReader::new(file).map_err(|e| data_error(e.to_string()))?;
    let x = read_features(&mut npz).map_err(|e| data_error(format!("X: {e}")))?;
    let y = read_labels(&mut npz).map_err(|e| data_error(format!("y: {e}")))?;
    let (rows, cols) = match x.shape() {
        &[rows, cols] => (rows, cols),
        shape => return Err(data_error(format!("X has shape {shape:?}, expected rows × features"))),
    };
    // A column vector of labels, (n, 1), is as good as a flat one.
    if y.len() != rows || y.shape().iter().filter(|&&extent| extent != 1).count() > 1 {
        return Err(data_error(format!("{rows} rows in X but y has shape {:?}", y.shape())));
    }
    let x = Matrix::new(x.iter().copied().collect(), cols).map_err(|e| data_error(e.to_string()))?;
    let name = path.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    Ok(Labelled { name, x, y: y.iter().map(|&label| label != 0.0).collect() })
}

fn read_features(npz: &mut NpzReader<File>) -> std::result::Result<ArrayD<f64>, String> {
    read_as_f64!(npz, "X",
        f64 => |v| v, f32 => f64::from,
        i64 => |v| v as f64, i32 => f64::from, i16 => f64::from, i8 => f64::from,
        u64 => |v| v as f64, u32 => f64::from, u16 => f64::from, u8 => f64::from,
    )
}

fn read_labels(npz: &mut NpzReader<File>) -> std::result::Result<ArrayD<f64>, String> {
    read_as_f64!(npz, "y",
        f64 => |v| v, f32 => f64::from, bool => |v| f64::from(u8::from(v)),
        i64 => |v| v as f64, i32 => f64::from, i16 => f64::from, i8 => f64::from,
        u64 => |v| v as f64, u32 => f64::from, u16 => f64::from, u8 => f64::from,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2};
    use ndarray_npy::{NpzWriter, WritableElement};

    /// Writes an `.npz` with `X` and `y` of the given element types, as NumPy's
    /// `savez_compressed` would.
    fn write_npz<X: WritableElement, Y: WritableElement>(path: &Path, x: Array2<X>, y: Array1<Y>) {
        let mut npz = NpzWriter::new_compressed(File::create(path).unwrap());
        npz.add_array("X", &x).unwrap();
        npz.add_array("y", &y).unwrap();
        npz.finish().unwrap();
    }

    fn features<T: Copy>(values: [T; 6]) -> Array2<T> {
        Array2::from_shape_vec((3, 2), values.to_vec()).unwrap()
    }

    fn assert_read(path: &Path) {
        let data = load_npz(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert_eq!((data.x.rows(), data.x.cols()), (3, 2));
        assert_eq!(data.x.row(2), &[5.0, 6.0]);
        assert_eq!(data.y, vec![false, true, false]);
    }

    #[test]
    fn features_and_labels_of_every_numeric_type_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(format!("{name}.npz"));
        let labels_i32 = Array1::from(vec![0i32, 1, 0]);
        // X in each type, y as int32 (ADBench's own files, which stopped the bench before).
        write_npz(&path("x_f64"), features([1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]), labels_i32.clone());
        write_npz(&path("x_f32"), features([1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]), labels_i32.clone());
        write_npz(&path("x_i64"), features([1i64, 2, 3, 4, 5, 6]), labels_i32.clone());
        write_npz(&path("x_i32"), features([1i32, 2, 3, 4, 5, 6]), labels_i32.clone());
        write_npz(&path("x_i16"), features([1i16, 2, 3, 4, 5, 6]), labels_i32.clone());
        write_npz(&path("x_i8"), features([1i8, 2, 3, 4, 5, 6]), labels_i32.clone());
        write_npz(&path("x_u64"), features([1u64, 2, 3, 4, 5, 6]), labels_i32.clone());
        write_npz(&path("x_u32"), features([1u32, 2, 3, 4, 5, 6]), labels_i32.clone());
        write_npz(&path("x_u16"), features([1u16, 2, 3, 4, 5, 6]), labels_i32.clone());
        write_npz(&path("x_u8"), features([1u8, 2, 3, 4, 5, 6]), labels_i32);
        // y in each type, X as float64.
        let x = || features([1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]);
        write_npz(&path("y_i64"), x(), Array1::from(vec![0i64, 1, 0]));
        write_npz(&path("y_i16"), x(), Array1::from(vec![0i16, 1, 0]));
        write_npz(&path("y_i8"), x(), Array1::from(vec![0i8, 1, 0]));
        write_npz(&path("y_u8"), x(), Array1::from(vec![0u8, 1, 0]));
        write_npz(&path("y_u32"), x(), Array1::from(vec![0u32, 1, 0]));
        write_npz(&path("y_bool"), x(), Array1::from(vec![false, true, false]));
        write_npz(&path("y_f64"), x(), Array1::from(vec![0.0f64, 1.0, 0.0]));
        write_npz(&path("y_f32"), x(), Array1::from(vec![0.0f32, 1.0, 0.0]));
        let mut read = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            assert_read(&entry.unwrap().path());
            read += 1;
        }
        assert_eq!(read, 18);
    }

    #[test]
    fn unreadable_files_are_errors_that_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let truncated = dir.path().join("truncated.npz");
        write_npz(&truncated, features([1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]), Array1::from(vec![0i32, 1, 0]));
        let bytes = std::fs::read(&truncated).unwrap();
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let text = dir.path().join("text.npz");
        std::fs::write(&text, "not a zip archive").unwrap();
        let mismatched = dir.path().join("mismatched.npz");
        write_npz(&mismatched, features([1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]), Array1::from(vec![0i32, 1]));
        for path in [&truncated, &text, &mismatched] {
            let error = load_npz(path).err().unwrap_or_else(|| panic!("{} was read", path.display()));
            assert!(error.to_string().contains(&path.display().to_string()), "{error}");
        }
    }
}
