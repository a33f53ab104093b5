//! Writing small state files so that a crash leaves either the old or the new content, never a
//! torn mix: write a temporary file next to the target, then rename it over the target.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Replaces the file at `path` with `bytes` atomically (write-temp, rename). With `durable`
/// the data and the rename are also flushed to disk (fsync), for state that must survive a
/// power loss; without, the file survives a crash of the process, which is cheaper.
pub fn write(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    {
        let mut f = File::create(tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
    }
    std::fs::rename(tmp, path)?;
    if !durable {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        // Makes the rename itself durable; not all file systems support it, which is fine.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
