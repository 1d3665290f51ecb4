//! A per-op wall-clock profile of the kernel layer: when it is switched on ([`set_enabled`], or
//! `UMBRA_PROFILE=1`), every public kernel function (and every [`scope`] a model marks, such as a U-Net's
//! skip concatenation) adds its time, call count and — for the matrix ops — its floating-point work to a
//! table keyed by op and shape. `umbra bench unet|vae --profile` prints the table of one evaluation.
//!
//! candle runs CPU ops eagerly, so a function's wall time is the op's time. Off, the cost is one relaxed
//! atomic load per call. Backward passes of the custom ops are not in the table (it profiles inference).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// One (op, shape) row of the profile.
#[derive(Debug, Clone, PartialEq)]
pub struct OpStat {
    pub op: &'static str,
    /// The shape the op ran at, e.g. `320→320 3×3 s1 @64×64 (b2)`.
    pub shape: String,
    pub calls: u64,
    pub seconds: f64,
    /// Floating-point operations over all calls (multiply and add counted separately; 0 when not counted).
    pub flops: f64,
}

static ENABLED: AtomicU8 = AtomicU8::new(0);
#[allow(clippy::type_complexity)]
static TABLE: Mutex<Option<HashMap<(&'static str, String), (u64, f64, f64)>>> = Mutex::new(None);

/// Whether the profile records (set by [`set_enabled`], else `UMBRA_PROFILE=1` in the environment).
pub fn is_enabled() -> bool {
    match ENABLED.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = std::env::var("UMBRA_PROFILE").is_ok_and(|v| v == "1");
            set_enabled(on);
            on
        }
    }
}

/// Switch recording on or off (process-wide).
pub fn set_enabled(on: bool) {
    ENABLED.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Forget everything recorded so far.
pub fn reset() {
    *TABLE.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The rows recorded since the last [`reset`], slowest first.
pub fn snapshot() -> Vec<OpStat> {
    let t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<OpStat> = t
        .iter()
        .flatten()
        .map(|((op, shape), &(calls, seconds, flops))| OpStat { op, shape: shape.clone(), calls, seconds, flops })
        .collect();
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then_with(|| a.op.cmp(b.op)));
    rows
}

fn record(op: &'static str, shape: String, seconds: f64, flops: f64) {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let e = t.get_or_insert_with(HashMap::new).entry((op, shape)).or_insert((0, 0.0, 0.0));
    e.0 += 1;
    e.1 += seconds;
    e.2 += flops;
}

/// Run `f` as op `op`; when recording, add its wall time under the shape (and flop count) `describe` gives.
pub fn timed<T>(op: &'static str, describe: impl FnOnce() -> (String, f64), f: impl FnOnce() -> T) -> T {
    if !is_enabled() {
        return f();
    }
    let t0 = Instant::now();
    let out = f();
    let dt = t0.elapsed().as_secs_f64();
    let (shape, flops) = describe();
    record(op, shape, dt, flops);
    out
}

/// [`timed`] for code outside the kernel layer (a model's concatenations, reshapes and copies), with no flop
/// count.
pub fn scope<T>(op: &'static str, shape: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    timed(op, || (shape(), 0.0), f)
}

/// The profile of one run as Markdown: per op (all shapes together) with its share of `total_seconds` and its
/// GFLOP/s where counted, the time no recorded op accounts for (candle's own elementwise ops, copies), then
/// the `top` slowest (op, shape) rows.
pub fn markdown(rows: &[OpStat], total_seconds: f64, top: usize) -> String {
    let mut by_op: Vec<(&'static str, u64, f64, f64)> = Vec::new();
    for r in rows {
        match by_op.iter_mut().find(|o| o.0 == r.op) {
            Some(o) => {
                o.1 += r.calls;
                o.2 += r.seconds;
                o.3 += r.flops;
            }
            None => by_op.push((r.op, r.calls, r.seconds, r.flops)),
        }
    }
    by_op.sort_by(|a, b| b.2.total_cmp(&a.2));
    let pct = |s: f64| if total_seconds > 0.0 { 100.0 * s / total_seconds } else { 0.0 };
    let rate = |s: f64, f: f64| if f > 0.0 && s > 0.0 { format!("{:.0}", f / s / 1e9) } else { "—".into() };
    let mut md = String::from("| op | calls | ms | share | GFLOP/s |\n|---|---:|---:|---:|---:|\n");
    let mut recorded = 0.0;
    for (op, calls, s, f) in &by_op {
        recorded += s;
        md.push_str(&format!("| {op} | {calls} | {:.1} | {:.1}% | {} |\n", 1e3 * s, pct(*s), rate(*s, *f)));
    }
    let other = (total_seconds - recorded).max(0.0);
    md.push_str(&format!(
        "| other (candle's elementwise ops, copies, allocation) | | {:.1} | {:.1}% | |\n",
        1e3 * other,
        pct(other)
    ));
    md.push_str(&format!("| **total** | | **{:.1}** | 100% | |\n", 1e3 * total_seconds));
    md.push_str(&format!(
        "\nSlowest {} (op, shape) rows:\n\n| op | shape | calls | ms | share | GFLOP/s |\n|---|---|---:|---:|---:|---:|\n",
        top.min(rows.len())
    ));
    for r in rows.iter().take(top) {
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1}% | {} |\n",
            r.op,
            r.shape,
            r.calls,
            1e3 * r.seconds,
            pct(r.seconds),
            rate(r.seconds, r.flops)
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_when_enabled_and_sums_per_shape() {
        // One test owns the process-wide switch (tests in this file run in one binary).
        reset();
        set_enabled(false);
        timed("x", || ("a".into(), 1.0), || ());
        assert!(snapshot().is_empty());
        set_enabled(true);
        for _ in 0..3 {
            timed("x", || ("a".into(), 10.0), || std::thread::sleep(std::time::Duration::from_millis(2)));
        }
        scope("y", || "b".into(), || ());
        let rows = snapshot();
        set_enabled(false);
        let x = rows.iter().find(|r| r.op == "x").unwrap();
        assert_eq!((x.calls, x.flops), (3, 30.0));
        assert!(x.seconds >= 0.006, "{}", x.seconds);
        assert_eq!(rows[0].op, "x", "slowest first");
        let md = markdown(&rows, 0.01, 5);
        assert!(md.contains("| x | 3 |") && md.contains("other") && md.contains("| y | b | 1 |"), "{md}");
        reset();
        assert!(snapshot().is_empty());
    }
}
