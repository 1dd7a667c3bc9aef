//! Role services.
