//! A bounded smoke test of `umbra bench serve`'s library part (`umbra_serve::bench`) on the tiny reference
//! pipeline: a few requests at 1 and 2 clients and a 3-pair overhead run; the report's fields are sane. No
//! speed is asserted.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use umbra_serve::bench::{self, Work};
use umbra_serve::{Limits, ServeConfig};

#[test]
fn percentiles_and_medians() {
    let v: Vec<f64> = (1..=20).map(f64::from).collect();
    assert_eq!(bench::percentile(&v, 0.5), 10.0);
    assert_eq!(bench::percentile(&v, 0.95), 19.0);
    assert_eq!(bench::percentile(&v, 1.0), 20.0);
    assert_eq!(bench::percentile(&[7.0], 0.95), 7.0);
    assert!(bench::percentile(&[], 0.5).is_nan());
    assert_eq!(bench::median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(bench::median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
}

#[test]
fn bench_serve_reports_throughput_and_overhead_on_the_tiny_model() {
    let config = ServeConfig { limits: Limits { max_queue: 4, ..Default::default() }, ..Default::default() };
    let Some(srv) = server(config, false) else { return };
    let work = Work { prompt: "a cat".into(), steps: 2, width: 32, height: 32, guidance: 7.0, seed: 1 };
    let done = AtomicUsize::new(0);
    let t = Duration::from_secs(120);
    let levels = bench::throughput(srv.addr, &work, &[1, 2], 4, t, &|| {
        done.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 8);
    assert_eq!(levels.len(), 2);
    for (l, c) in levels.iter().zip([1, 2]) {
        eprintln!("{l:?}");
        assert_eq!((l.clients, l.requests, l.ok, l.rejected, l.errors), (c, 4, 4, 0, 0));
        assert!(l.seconds > 0.0 && l.requests_per_s > 0.0 && l.requests_per_s.is_finite());
        assert!(0.0 < l.p50_ms && l.p50_ms <= l.p95_ms && l.p95_ms <= l.max_ms, "{l:?}");
        // 4 requests in `seconds`: the slowest cannot have taken longer than the whole level.
        assert!(l.max_ms <= l.seconds * 1e3 + 1.0, "{l:?}");
    }
    assert_eq!(srv.state.queue.runs.load(Ordering::SeqCst), 8);
    let runs = AtomicUsize::new(0);
    let w = Work { steps: 1, ..work };
    let o = bench::overhead(&srv, 0, &w, 3, false, t, &|| {
        runs.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    eprintln!("{o:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 6);
    assert_eq!((o.server_s.len(), o.library_s.len(), o.overheads.len()), (3, 3, 3));
    assert!(o.server_s.iter().chain(&o.library_s).all(|&s| s > 0.0 && s.is_finite()));
    assert!(o.overheads.iter().all(|x| x.is_finite() && *x > -1.0));
    assert!(o.median_library_s > 0.0 && o.median_overhead.is_finite());
    assert_eq!(o.model, "pipeline");
    // The JSON report has every field.
    let r = bench::BenchReport { model: "pipeline".into(), work: w, levels, overhead: Some(o) };
    let v = serde_json::to_value(&r).unwrap();
    for k in ["requests_per_s", "p50_ms", "p95_ms"] {
        assert!(v["levels"][0][k].is_number(), "{k}");
    }
    assert!(v["overhead"]["median_overhead"].is_number());
    // Bad arguments are errors, not panics.
    assert!(bench::throughput(srv.addr, &r.work, &[0], 4, t, &|| {}).is_err());
    assert!(bench::overhead(&srv, 5, &r.work, 3, false, t, &|| {}).is_err());
}
