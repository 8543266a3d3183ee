//! Arguments of `img bench`.

use clap::Args;

/// `img bench [-f FMT] [-t CACHE] [-c COUNT] [-d DEPTH] [-o OFFSET]
/// [-s BUFFER_SIZE] [-S STEP_SIZE] [-i AIO] [-n] [-w [--pattern PATTERN]
/// [--flush-interval INTERVAL [--no-drain]]] FILE`
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct BenchArgs {
    /// Format of the image (probed if not given)
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Cache mode: none or writeback (default writeback)
    #[arg(short = 't', long = "cache", value_name = "CACHE")]
    pub cache: Option<String>,
    /// Number of I/O requests to perform (default 75000)
    #[arg(
        short = 'c',
        long = "count",
        allow_hyphen_values = true,
        value_name = "COUNT"
    )]
    pub count: Option<String>,
    /// Size of each request (default 4K)
    #[arg(
        short = 's',
        long = "buffer-size",
        allow_hyphen_values = true,
        value_name = "BUFFER_SIZE"
    )]
    pub buffer_size: Option<String>,
    /// Requests in flight at once (default 64)
    #[arg(
        short = 'd',
        long = "depth",
        allow_hyphen_values = true,
        value_name = "DEPTH"
    )]
    pub depth: Option<String>,
    /// Offset of the first request (default 0)
    #[arg(
        short = 'o',
        long = "offset",
        allow_hyphen_values = true,
        value_name = "OFFSET"
    )]
    pub offset: Option<String>,
    /// Increment between request offsets (default: the buffer size)
    #[arg(
        short = 'S',
        long = "step-size",
        allow_hyphen_values = true,
        value_name = "STEP_SIZE"
    )]
    pub step_size: Option<String>,
    /// Async I/O backend (io_uring; threads and native are accepted)
    #[arg(short = 'i', long = "aio", value_name = "AIO")]
    pub aio: Option<String>,
    /// Use native AIO (accepted)
    #[arg(short = 'n', long = "native")]
    pub native: bool,
    /// Write instead of read
    #[arg(short = 'w', long = "write")]
    pub write: bool,
    /// Byte to write (default 0)
    #[arg(long = "pattern", allow_hyphen_values = true, value_name = "PATTERN")]
    pub pattern: Option<String>,
    /// Flush after this many requests
    #[arg(
        long = "flush-interval",
        allow_hyphen_values = true,
        value_name = "FLUSH_INTERVAL"
    )]
    pub flush_interval: Option<String>,
    /// Do not wait for requests in flight before a flush
    #[arg(long = "no-drain")]
    pub no_drain: bool,
    /// Open in shared mode (accepted)
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Quiet mode
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// The image
    #[arg(value_name = "FILE")]
    pub filename: String,
}
