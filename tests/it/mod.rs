mod crash;
mod enqueue;
mod errors;
mod round;
mod util;
mod worked_example;
