mod crash;
mod enqueue;
mod errors;
mod http;
mod round;
mod server;
mod util;
mod worked_example;
