//! Dataset loaders on real shared files and on CIFAR binaries written here.

mod common;

use gati_core::data;
use std::path::Path;

/// A CIFAR-10 style batch: record i has label i % 10 and all pixels = i.
fn write_cifar10_batch(path: &Path, n: usize) {
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.push((i % 10) as u8);
        bytes.extend(std::iter::repeat_n(i as u8, 3072));
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn cifar10_binary_batches_load() {
    let dir = tempfile::tempdir().unwrap();
    for b in 1..=5 {
        write_cifar10_batch(&dir.path().join(format!("data_batch_{b}.bin")), 4);
    }
    write_cifar10_batch(&dir.path().join("test_batch.bin"), 12);
    let test = data::load(dir.path(), "test", None, (32, 32)).unwrap();
    assert_eq!(test.len(), 12);
    assert_eq!(test.labels[..3], [0, 1, 2]);
    assert_eq!(test.labels[11], 1);
    assert_eq!(test.classes[3], "cat");
    assert_eq!(test.images.size(), vec![12, 3, 32, 32]);
    assert_eq!(test.images.int64_value(&[7, 2, 31, 31]), 7);
    let train = data::load_cifar_binary(dir.path(), "train").unwrap();
    assert_eq!(train.len(), 20);
    assert!(train.sources[5].ends_with("data_batch_2.bin#1"), "{}", train.sources[5]);
}

#[test]
fn cifar100_binary_uses_fine_labels_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    for i in 0..3u8 {
        bytes.extend([i, 50 + i]); // coarse, fine
        bytes.extend(std::iter::repeat_n(100 + i, 3072));
    }
    std::fs::write(dir.path().join("test.bin"), &bytes).unwrap();
    let names: String = (0..100).map(|i| format!("fine{i}\n")).collect();
    std::fs::write(dir.path().join("fine_label_names.txt"), names).unwrap();
    let ds = data::load(dir.path(), "test", None, (32, 32)).unwrap();
    assert_eq!(ds.labels, vec![50, 51, 52]);
    assert_eq!(ds.classes.len(), 100);
    assert_eq!(ds.classes[51], "fine51");
    assert_eq!(ds.images.int64_value(&[2, 0, 0, 0]), 102);
}

#[test]
fn truncated_cifar_batch_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test_batch.bin"), vec![0u8; 3073 * 2 + 100]).unwrap();
    let e = format!("{:#}", data::load(dir.path(), "test", None, (32, 32)).unwrap_err());
    assert!(
        e.contains("test_batch.bin is 6246 bytes, not a whole number of 3073-byte CIFAR-10 records"),
        "{e}"
    );
    let e = format!("{:#}", data::load(dir.path(), "valid", None, (32, 32)).unwrap_err());
    assert!(e.contains("'valid'"), "{e}");
}

#[test]
fn image_folder_orders_classes_and_balances_limits() {
    let ds = data::load_image_folder(&common::cifar_jpeg(), "test", Some(25), (32, 32)).unwrap();
    assert_eq!(ds.classes, data::CIFAR10_CLASSES);
    assert_eq!(ds.labels[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    assert!(ds.sources[3].ends_with("test/cat/0000.jpg"), "{}", ds.sources[3]);
    let full = data::load_image_folder(&common::cifar_jpeg(), "test", None, (32, 32)).unwrap();
    assert_eq!(full.len(), 10_000);
    for c in 0..10 {
        assert_eq!(full.labels.iter().filter(|&&l| l == c).count(), 1000);
    }
}

#[test]
fn corrupt_and_wrong_size_images_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cls = dir.path().join("test/cat");
    std::fs::create_dir_all(&cls).unwrap();
    let good = common::cifar_jpeg().join("test/cat/0000.jpg");
    std::fs::copy(&good, cls.join("0.jpg")).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(cls.join("1.jpg"), &bytes[..bytes.len() / 3]).unwrap();
    let e = format!(
        "{:#}",
        data::load_image_folder(dir.path(), "test", None, (32, 32)).unwrap_err()
    );
    assert!(e.contains("1.jpg") && e.contains("cannot decode"), "{e}");

    std::fs::remove_file(cls.join("1.jpg")).unwrap();
    let big = image::RgbImage::new(40, 32);
    big.save(cls.join("2.png")).unwrap();
    let e = format!(
        "{:#}",
        data::load_image_folder(dir.path(), "test", None, (32, 32)).unwrap_err()
    );
    assert!(
        e.contains("2.png") && e.contains("is 40x32 (WxH), expected 32x32"),
        "{e}"
    );

    std::fs::write(cls.join("2.png"), b"hello").unwrap();
    let e = format!(
        "{:#}",
        data::load_image_folder(dir.path(), "test", None, (32, 32)).unwrap_err()
    );
    assert!(
        e.contains("2.png") && e.contains("not a recognised image format"),
        "{e}"
    );

    let e = format!(
        "{:#}",
        data::load_image_folder(dir.path(), "train", None, (32, 32)).unwrap_err()
    );
    assert!(e.contains("train does not exist"), "{e}");
}
