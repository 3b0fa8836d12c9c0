//! Fetching jars and applications from Maven Central into the cache, atomically.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::{io, HarnessError};

/// Runs Maven (`mvn -B -q <args> -DoutputDirectory=...`) into a private directory beside `dir`,
/// then renames it to `dir`: concurrent callers never see half a set (if another got there
/// first, its copy stays).
pub(crate) fn fetch_with_maven(dir: &Path, args: &[&str]) -> Result<(), HarnessError> {
    fetch_with_maven_steps(dir, &[(args, "")])
}

/// [`fetch_with_maven`] with several Maven runs, each into its sub-directory of the staging
/// directory (`""`: the staging directory itself), renamed to `dir` once all have succeeded.
pub(crate) fn fetch_with_maven_steps(dir: &Path, steps: &[(&[&str], &str)]) -> Result<(), HarnessError> {
    let parent = dir.parent().map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    fs::create_dir_all(&parent).map_err(io(format!("create {}", parent.display())))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staging = parent.join(format!("{name}.partial-{}", std::process::id()));
    for (args, sub) in steps {
        let output = Command::new("mvn")
            .args(["-B", "-q"])
            .args(*args)
            .arg(format!("-DoutputDirectory={}", staging.join(sub).display()))
            .output()
            .map_err(io("run mvn (is Maven installed? scripts/setup.sh installs it)"))?;
        if !output.status.success() {
            let _ = fs::remove_dir_all(&staging);
            return Err(HarnessError::Maven {
                status: output.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
    }
    if fs::rename(&staging, dir).is_err() {
        // Someone else got there first.
        let _ = fs::remove_dir_all(&staging);
    }
    Ok(())
}
