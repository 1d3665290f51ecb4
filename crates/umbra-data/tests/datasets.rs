//! IDX / MNIST parsing and validation, the built-in digits and mnist-mini, dataset specs, checksums.

use std::io::Write;
use std::path::{Path, PathBuf};
use umbra_data::idx::{self, IdxArray, IMAGES_MAGIC, LABELS_MAGIC};
use umbra_data::{fetch, load_dataset, DataError, Split};

fn mnist_dir() -> Option<PathBuf> {
    umbra_test_support::shared_or_skip("data/mnist", "t10k-images-idx3-ubyte.gz")
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn small_idx(n: usize) -> (Vec<u8>, Vec<u8>) {
    let images =
        IdxArray { magic: IMAGES_MAGIC, dims: vec![n, 4, 3], data: (0..n * 12).map(|i| (i * 7 % 256) as u8).collect() };
    let labels = IdxArray { magic: LABELS_MAGIC, dims: vec![n], data: (0..n).map(|i| (i % 10) as u8).collect() };
    (idx::encode_idx(&images), idx::encode_idx(&labels))
}

fn write_mnist_like(dir: &Path, split_prefix: &str, images: &[u8], labels: &[u8]) {
    std::fs::write(dir.join(format!("{split_prefix}-images-idx3-ubyte.gz")), gz(images)).unwrap();
    std::fs::write(dir.join(format!("{split_prefix}-labels-idx1-ubyte")), labels).unwrap();
}

#[test]
fn real_mnist_train_and_test_parse() {
    let Some(dir) = mnist_dir() else { return };
    let train = idx::load_mnist(&dir, Split::Train).unwrap();
    assert_eq!(train.shape(), [60000, 1, 28, 28]);
    assert_eq!(train.labels[0], 5);
    let test = idx::load_mnist(&dir, Split::Test).unwrap();
    assert_eq!(test.shape(), [10000, 1, 28, 28]);
    assert_eq!(&test.labels[..5], &[7, 2, 1, 0, 4]);
    // Known MNIST statistics: mean pixel 0.1307 (train), train label counts (1 is the most common: 6742).
    assert!((train.mean() - 0.1307).abs() < 1e-3, "train mean {}", train.mean());
    let h = train.label_histogram();
    assert_eq!(h.iter().sum::<usize>(), 60000);
    assert_eq!(h[1], 6742);
    assert_eq!(h[5], 5421);
    assert!(train.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
}

#[test]
fn raw_and_gzip_give_identical_arrays() {
    let Some(dir) = mnist_dir() else { return };
    let gz_path = dir.join("t10k-labels-idx1-ubyte.gz");
    let from_gz = idx::read_idx(&gz_path, Some(LABELS_MAGIC)).unwrap();
    let raw = idx::maybe_gunzip(std::fs::read(&gz_path).unwrap(), &gz_path).unwrap();
    let t = tmp_dir("rawgz");
    let raw_path = t.join("t10k-labels-idx1-ubyte");
    std::fs::write(&raw_path, &raw).unwrap();
    let from_raw = idx::read_idx(&raw_path, Some(LABELS_MAGIC)).unwrap();
    assert_eq!(from_gz, from_raw);
    assert_eq!(from_raw.dims, vec![10000]);
}

#[test]
fn truncated_file_error_names_file_and_sizes() {
    let (images, _) = small_idx(10);
    let t = tmp_dir("trunc");
    let p = t.join("cut-images-idx3-ubyte");
    std::fs::write(&p, &images[..images.len() - 5]).unwrap();
    let err = idx::read_idx(&p, Some(IMAGES_MAGIC)).unwrap_err().to_string();
    let want = format!("need {} bytes, found {}", images.len(), images.len() - 5);
    assert!(err.contains("cut-images-idx3-ubyte") && err.contains(&want) && err.contains("truncated"), "{err}");

    // A truncated gzip stream is reported as such, naming the file.
    let z = gz(&images);
    let pz = t.join("cut.gz");
    std::fs::write(&pz, &z[..z.len() / 2]).unwrap();
    let err = idx::read_idx(&pz, Some(IMAGES_MAGIC)).unwrap_err().to_string();
    assert!(err.contains("cut.gz") && err.contains("gzip"), "{err}");
}

#[test]
fn truncated_real_mnist_copy_is_rejected() {
    let Some(dir) = mnist_dir() else { return };
    let src = dir.join("t10k-images-idx3-ubyte.gz");
    let raw = idx::maybe_gunzip(std::fs::read(&src).unwrap(), &src).unwrap();
    let t = tmp_dir("truncreal");
    std::fs::write(t.join("t10k-images-idx3-ubyte"), &raw[..raw.len() - 784]).unwrap();
    std::fs::copy(dir.join("t10k-labels-idx1-ubyte.gz"), t.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let err = idx::load_mnist(&t, Split::Test).unwrap_err().to_string();
    assert!(err.contains("need 7840016 bytes, found 7839232"), "{err}");
}

#[test]
fn bad_magic_and_count_mismatch_errors() {
    let (images, labels) = small_idx(6);
    let t = tmp_dir("magic");
    // Labels file where images are expected.
    let p = t.join("swapped");
    std::fs::write(&p, &labels).unwrap();
    let err = idx::read_idx(&p, Some(IMAGES_MAGIC)).unwrap_err().to_string();
    assert!(err.contains("bad magic 0x00000801, expected 0x00000803"), "{err}");
    // Not IDX at all.
    std::fs::write(&p, b"<html>404</html>").unwrap();
    let err = idx::read_idx(&p, None).unwrap_err().to_string();
    assert!(err.contains("bad magic 0x3c68746d"), "{err}");
    // Count mismatch: 6 images, 5 labels.
    let (_, labels5) = small_idx(5);
    write_mnist_like(&t, "train", &images, &labels5);
    let err = idx::load_mnist(&t, Split::Train).unwrap_err().to_string();
    assert!(err.contains("labels/images count mismatch: 5 labels") && err.contains("6 images"), "{err}");
    // Consistent files load, pixels scaled by 1/255.
    write_mnist_like(&t, "train", &images, &labels);
    let d = idx::load_mnist(&t, Split::Train).unwrap();
    assert_eq!(d.shape(), [6, 1, 4, 3]);
    assert_eq!(d.images[1], 7.0 / 255.0);
}

#[test]
fn missing_mnist_says_how_to_get_it() {
    let t = tmp_dir("missing");
    let err = idx::load_mnist(&t, Split::Test).unwrap_err().to_string();
    assert!(
        err.contains("t10k-images-idx3-ubyte") && err.contains("umbra data fetch mnist") && err.contains("--data"),
        "{err}"
    );
    let err = load_dataset("mnist", Some(&t), Split::Test).unwrap_err();
    assert!(matches!(err, DataError::NotFound(_)));
}

#[test]
fn digits_builtin_count_and_histogram() {
    let all = umbra_data::digits::load_digits_all().unwrap();
    assert_eq!(all.shape(), [1797, 1, 8, 8]);
    // sklearn's load_digits label counts.
    assert_eq!(all.label_histogram(), vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    assert_eq!(all.labels[..3], [0, 1, 2]);
    // First image row 0: 0,0,5,13,9,1,0,0 → /16.
    assert_eq!(&all.images[..8], &[0.0, 0.0, 5.0 / 16.0, 13.0 / 16.0, 9.0 / 16.0, 1.0 / 16.0, 0.0, 0.0]);
    assert!(all.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
    let train = load_dataset("digits", None, Split::Train).unwrap();
    let test = load_dataset("digits", None, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (1500, 297));
    assert_eq!(test.image(0), all.image(1500));
    assert!(test.label_histogram().iter().all(|&c| c >= 25), "{:?}", test.label_histogram());
}

#[test]
fn digits_csv_errors_name_the_line() {
    let p = Path::new("x.csv");
    let line = |v: &str| format!("{}{v}\n", "0,".repeat(64));
    let err = umbra_data::digits::parse_digits_csv(&line("12"), p).unwrap_err().to_string();
    assert!(err.contains("line 1: label 12"), "{err}");
    let err = umbra_data::digits::parse_digits_csv(&format!("{}1,2\n", line("3")), p).unwrap_err().to_string();
    assert!(err.contains("line 2: expected 65"), "{err}");
}

#[test]
fn mnist_mini_matches_first_1000_test_images() {
    let mini = umbra_data::mnist_mini::load_mnist_mini_all().unwrap();
    assert_eq!(mini.shape(), [1000, 1, 28, 28]);
    assert_eq!(&mini.labels[..5], &[7, 2, 1, 0, 4]);
    let train = load_dataset("mnist-mini", None, Split::Train).unwrap();
    let test = load_dataset("mnist-mini", None, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (800, 200));
    let Some(dir) = mnist_dir() else { return };
    let full = idx::load_mnist(&dir, Split::Test).unwrap();
    assert_eq!(&full.images[..1000 * 784], &mini.images[..]);
    assert_eq!(&full.labels[..1000], &mini.labels[..]);
}

#[test]
fn dataset_specs_and_unknown_names() {
    let err = load_dataset("cifar", None, Split::Train).unwrap_err().to_string();
    assert!(
        err.contains("unknown dataset `cifar`") && err.contains("toy2d:8gaussians") && err.contains("mnist-mini"),
        "{err}"
    );
    let err = load_dataset("toy2d:spiral", None, Split::Train).unwrap_err().to_string();
    assert!(err.contains("valid: moons, swissroll, 8gaussians, checkerboard"), "{err}");
    assert!(load_dataset("toy2d:moons:0", None, Split::Train).is_err());
    let d = load_dataset("toy2d:moons", None, Split::Train).unwrap();
    assert_eq!((d.len(), d.dim(), d.num_classes), (10_000, 2, 2));
    let d = load_dataset("toy2d:8gaussians:500", None, Split::Test).unwrap();
    assert_eq!(d.len(), 500);
    // Train and test draws differ (different seeds).
    let a = load_dataset("toy2d:checkerboard:10", None, Split::Train).unwrap();
    let b = load_dataset("toy2d:checkerboard:10", None, Split::Test).unwrap();
    assert_ne!(a.images, b.images);
}

#[test]
fn tensor_batches_have_the_right_shapes() {
    let d = load_dataset("digits", None, Split::Test).unwrap();
    let dev = candle_core::Device::Cpu;
    let b = d.batch(&[0, 5, 7], &dev).unwrap();
    assert_eq!(b.dims(), &[3, 1, 8, 8]);
    let f = d.batch_flat(&[5], &dev).unwrap();
    assert_eq!(f.to_vec2::<f32>().unwrap()[0], d.image(5));
    let l = d.batch_labels(&[0, 5], &dev).unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(l, vec![d.labels[0] as u32, d.labels[5] as u32]);
    assert!(d.batch(&[297], &dev).unwrap_err().to_string().contains("out of range"));
}

#[test]
fn checksum_verification_on_local_files() {
    // The hard-coded checksum of the embedded mnist-mini fixture's source is not in the table, so
    // check: (1) sha256 of known bytes, (2) a tampered file fails with both hashes in the message.
    assert_eq!(fetch::sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let t = tmp_dir("sha");
    let p = t.join("t10k-labels-idx1-ubyte.gz");
    std::fs::write(&p, gz(b"not mnist")).unwrap();
    let err = fetch::verify_file(&p, fetch::MNIST_FILES[3].1).unwrap_err().to_string();
    assert!(err.contains("SHA-256 mismatch") && err.contains(fetch::MNIST_FILES[3].1), "{err}");
    let Some(dir) = mnist_dir() else { return };
    let checked = fetch::verify_mnist_dir(&dir).unwrap();
    assert_eq!(checked.len(), 4);
}
