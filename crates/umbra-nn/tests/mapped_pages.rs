//! Loading a tensor out of a memory-mapped safetensors file leaves its mapped pages out of the resident set:
//! a single-file checkpoint is held open (mapped) for all its components, and without the release every loaded
//! tensor would be resident twice, the mapping and the copy. Its own test binary, so that no other test's
//! mappings move the process's RssFile while it measures.

use candle_core::{Device, Tensor};
use umbra_nn::loading::RenamedWeights;

/// This process's file-backed resident memory in MiB (RssFile in /proc/self/status; Linux only).
fn rss_file_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("RssFile:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[test]
fn loaded_tensors_do_not_stay_resident_in_the_mapping() {
    if rss_file_mib().is_none() {
        eprintln!("SKIPPED: no RssFile in /proc/self/status (not Linux)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("umbra-mapped-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.safetensors");
    // 2 × 48 MiB of f32, distinct values so that a wrong re-read would show.
    let (rows, cols) = (3072usize, 4096usize);
    let v: Vec<f32> = (0..rows * cols).map(|i| (i % 9973) as f32 * 0.25).collect();
    let a = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
    let b = (&a * 2.0).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("a", a.clone()), ("b", b.clone())]), &path)
        .unwrap();
    drop(std::fs::read(&path).unwrap()); // warm the page cache, so both runs below see the same cache state
    let w = RenamedWeights::open(std::slice::from_ref(&path)).unwrap();
    let before = rss_file_mib().unwrap();
    let la = w.load("a", &Device::Cpu).unwrap();
    let lb = w.load("b", &Device::Cpu).unwrap();
    let grown = rss_file_mib().unwrap() - before;
    eprintln!("RssFile grew by {grown:.1} MiB while 96 MiB of tensors were loaded from the open mapping");
    assert!(grown < 8.0, "the mapped pages stayed resident: RssFile +{grown:.1} MiB for 96 MiB of tensors");
    // The copies are exact, and a second read of the released pages comes back from the file unchanged.
    let diff = |x: &Tensor, y: &Tensor| (x - y).unwrap().abs().unwrap().max_keepdim(1).unwrap().max(0).unwrap();
    for (name, want) in [("a", &a), ("b", &b)] {
        let got = if name == "a" { &la } else { &lb };
        assert_eq!(diff(got, want).to_vec1::<f32>().unwrap(), vec![0.0], "{name}");
        let again = w.load(name, &Device::Cpu).unwrap();
        assert_eq!(diff(&again, want).to_vec1::<f32>().unwrap(), vec![0.0], "{name} re-read");
    }
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
}
