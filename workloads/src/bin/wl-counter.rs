//! wl-counter: counters in heap, stack and a static, incremented in a loop;
//! a 64 KiB heap pattern with a checksum.
//!
//! After SIGTERM: the three counters are equal, larger than at ready time,
//! still increase, and the pattern's checksum is unchanged.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use workloads::{mix64, terminated, Checker};

static STATIC_COUNTER: AtomicU64 = AtomicU64::new(0);

fn checksum(data: &[u8]) -> u64 {
    data.chunks(8).fold(0u64, |acc, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        mix64(acc ^ u64::from_le_bytes(w))
    })
}

fn step(heap: &mut u64, stack: &mut u64) {
    *heap = black_box(*heap) + 1;
    *stack = black_box(*stack) + 1;
    STATIC_COUNTER.fetch_add(1, Ordering::SeqCst);
}

fn main() {
    let p = workloads::init();
    let mut heap_counter = Box::new(0u64);
    let mut stack_counter = 0u64;
    let pattern: Vec<u8> = (0..64 * 1024u64).map(|i| mix64(i) as u8).collect();
    let sum = checksum(&pattern);
    for _ in 0..1000 {
        step(&mut heap_counter, &mut stack_counter);
    }
    let at_ready = *heap_counter;
    p.ready();
    while !terminated() {
        for _ in 0..10_000 {
            step(&mut heap_counter, &mut stack_counter);
        }
        workloads::sleep_ms(1);
    }
    let mut c = Checker::new();
    let s = STATIC_COUNTER.load(Ordering::SeqCst);
    c.check(*heap_counter == stack_counter && stack_counter == s, || {
        format!("counters differ: heap {heap_counter} stack {stack_counter} static {s}")
    });
    c.check(*heap_counter > at_ready, || {
        format!("heap counter {} not above {at_ready}", *heap_counter)
    });
    let before = stack_counter;
    for _ in 0..1000 {
        step(&mut heap_counter, &mut stack_counter);
    }
    c.eq(
        "counter after 1000 more steps",
        before + 1000,
        stack_counter,
    );
    c.eq(
        "heap counter after 1000 more steps",
        before + 1000,
        *heap_counter,
    );
    c.eq(
        "64 KiB pattern checksum",
        sum,
        checksum(black_box(&pattern)),
    );
    p.finish(c.into_result());
}
