//! Queue engine at 1,000,000 leads (SPEC §6): `claim_next` latency (p99 under
//! 100 µs), `refresh` time (under 2 s) and memory per queued lead (under 300
//! bytes), measured with a counting global allocator.
//!
//! Run: `cargo bench --bench queue` (optionally `-- LEADS` for another size).
//!
//! A bench is a driver: it reads the clock to time the pure engine.
#![allow(clippy::disallowed_methods)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use powerdial::dialer::queue::{AgentId, LeadId, Outcome, SessionQueue, DEFAULT_BLOCK};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters are only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MIN: i64 = 60_000;
const T0: i64 = 1_704_067_200_000;

/// A fixed pseudo-random sequence (splitmix64): lead ids as a store would
/// hand them out in a view sorted by something other than id.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn lead(i: u64) -> LeadId {
    LeadId((mix(i) >> 1) as i64)
}

/// One lead in ten was called by another session within the last hour,
/// spread over it: R4 blocks them at start.
fn last_call(id: LeadId) -> Option<i64> {
    let h = mix(id.0 as u64);
    h.is_multiple_of(10)
        .then(|| T0 - (h / 10 % 60) as i64 * MIN)
}

struct Stats {
    sorted: Vec<u64>,
}

impl Stats {
    fn new(mut ns: Vec<u64>) -> Stats {
        ns.sort_unstable();
        Stats { sorted: ns }
    }

    fn pct(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.sorted.len() - 1) as f64 * p).round() as usize;
        Duration::from_nanos(self.sorted[i.min(self.sorted.len() - 1)])
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what:<28} n={:<8} p50={:>9.2?} p99={:>9.2?} p99.9={:>9.2?} max={:>9.2?}",
            self.sorted.len(),
            self.pct(0.50),
            self.pct(0.99),
            self.pct(0.999),
            self.pct(1.0),
        )
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    println!("queue engine, {n} leads, block {:?}", DEFAULT_BLOCK);

    let view: Vec<LeadId> = (0..n).map(lead).collect();

    // Memory: what the queue holds after the first refresh, and the peak
    // while building it (the input view is the caller's, excluded).
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let mut q = SessionQueue::new(DEFAULT_BLOCK);
    let (summary, cold) = timed(|| q.refresh(&view, last_call, T0).unwrap());
    let held = LIVE.load(Ordering::Relaxed) - before;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    println!(
        "refresh cold (all entering)   {cold:>9.2?}  entered={} blocked at start={}",
        summary.entered,
        q.counts().blocked
    );
    println!(
        "memory: {} bytes held = {:.1} bytes/lead (peak during refresh {:.1} bytes/lead)",
        held,
        held as f64 / n as f64,
        peak as f64 / n as f64
    );

    // A refresh where nothing changed, and one where 1 % left and 1 % entered
    // at scattered places.
    let (_, same) = timed(|| q.refresh(&view, last_call, T0).unwrap());
    println!("refresh unchanged             {same:>9.2?}");
    let mut changed: Vec<LeadId> = Vec::with_capacity(view.len());
    for (i, &l) in (0u64..).zip(&view) {
        match i % 100 {
            7 => {}
            53 => changed.extend([lead(n + i), l]),
            _ => changed.push(l),
        }
    }
    let (s, moved) = timed(|| q.refresh(&changed, last_call, T0).unwrap());
    println!(
        "refresh 1% churn              {moved:>9.2?}  entered={} left={}",
        s.entered, s.left
    );

    // Claims: 4 agents in turn, each call reported right away; the clock
    // moves 10 ms per call, so blocks from the first calls expire during the
    // first pass (promotions interleave) and the retry pass starts with both
    // tiers mixed.
    let agents = [AgentId(1), AgentId(2), AgentId(3), AgentId(4)];
    let calls = (n as usize) * 3 / 2;
    let mut claim_ns = Vec::with_capacity(calls);
    let mut report_ns = Vec::with_capacity(calls);
    let outcomes = [
        Outcome::NoAnswer,
        Outcome::NoAnswer,
        Outcome::Busy,
        Outcome::Answered,
        Outcome::Skipped,
        Outcome::NoAnswer,
        Outcome::Restricted,
    ];
    let mut now = T0;
    let mut idle = 0usize;
    let total = Instant::now();
    for i in 0..calls {
        let agent = agents[i % agents.len()];
        now += 10;
        let start = Instant::now();
        let claim = q.claim_next(agent, now).unwrap();
        claim_ns.push(start.elapsed().as_nanos() as u64);
        let Some(c) = claim else {
            idle += 1;
            continue;
        };
        let outcome = outcomes[(mix(i as u64) % outcomes.len() as u64) as usize];
        let start = Instant::now();
        q.report(agent, c.lead, c.generation, outcome, now).unwrap();
        report_ns.push(start.elapsed().as_nanos() as u64);
    }
    let total = total.elapsed();
    println!(
        "{} claims in {total:.2?} ({idle} found nothing ready); counts now {:?}",
        calls,
        q.counts()
    );
    println!("{}", Stats::new(claim_ns).line("claim_next"));
    println!("{}", Stats::new(report_ns).line("report"));

    // A refresh in the middle of the retry pass, with history to keep.
    let (_, mid) = timed(|| q.refresh(&changed, last_call, now).unwrap());
    println!("refresh mid-session           {mid:>9.2?}");
    let (_, reset) = timed(|| q.reset(now));
    println!("reset                         {reset:>9.2?}");

    // The session driver's calling-hours check before each dial (SPEC §4):
    // the number's zones (area code, else country) and the verdict.
    let hours = powerdial::dialer::hours::CallingHours::default();
    let numbers: Vec<String> = (0..100_000u64)
        .map(|i| match i % 4 {
            // North American area codes of several zones, and the UK.
            0 => format!("+1212555{:04}", i % 10_000),
            1 => format!("+1808555{:04}", i % 10_000),
            2 => format!("+1915555{:04}", i % 10_000),
            _ => format!("+4420794{:05}", i % 100_000),
        })
        .collect();
    let mut check_ns = Vec::with_capacity(numbers.len());
    let mut open = 0usize;
    for (i, n) in numbers.iter().enumerate() {
        let t = T0 + i as i64 * 997 * 1000;
        let start = Instant::now();
        let zones = powerdial::leads::zone::number_zones(n)
            .map(|z| z.zones)
            .unwrap_or_default();
        let v = hours.verdict(&zones, t);
        check_ns.push(start.elapsed().as_nanos() as u64);
        open += usize::from(v == powerdial::dialer::hours::Verdict::Open);
    }
    println!("calling-hours checks: {open} of {} open", numbers.len());
    println!("{}", Stats::new(check_ns).line("zones+verdict"));
}
