//! The HTTP plumbing's integration tests, one binary: the server's guarantees on real sockets
//! (auth, limits, timeouts, problem bodies, graceful shutdown) and arbitrary bytes on its socket.

mod raw_requests;
mod server;
