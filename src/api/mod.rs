//! The warp REST and WebSocket API.
