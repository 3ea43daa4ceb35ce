//! The memory tests, in a binary of their own: it counts every allocation (its global
//! allocator), and `make bench` prints their figures. Each test holds `heap::exclusive`
//! while it measures.

use integration_tests::heap::Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

mod hostile_bodies;
mod memory_bound;
