//! Python guest components, built with componentize-py (PyPI; `scripts/test` installs it).
//! A missing componentize-py fails the test that needs it: nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{output_text, repo_root};

/// The componentize-py command: `COMPONENTIZE_PY` if set, else `componentize-py` on `PATH`.
pub fn componentize_py_command() -> Command {
    let program = std::env::var_os("COMPONENTIZE_PY").unwrap_or_else(|| "componentize-py".into());
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    cmd
}

/// Builds `module` (a Python module in `module_dir`) against `world` of the repository's
/// `wit/plugin.wit` into `out`, and returns `out`. Panics with componentize-py's output if the
/// build fails, or with how to install it if it is missing.
pub fn componentize_py(world: &str, module_dir: &Path, module: &str, out: &Path) -> PathBuf {
    componentize_py_with(&repo_root().join("wit"), world, module_dir, module, out)
}

/// [`componentize_py`] against the WIT in `wit` (a scaffolded project's own `wit/`).
pub fn componentize_py_with(
    wit: &Path,
    world: &str,
    module_dir: &Path,
    module: &str,
    out: &Path,
) -> PathBuf {
    let output = componentize_py_command()
        .arg("-d")
        .arg(wit)
        .args(["-w", world, "componentize", "-p"])
        .arg(module_dir)
        .arg(module)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run componentize-py ({e}): scripts/test installs it \
                 (`python3 -m pip install componentize-py`), or set COMPONENTIZE_PY"
            )
        });
    assert!(
        output.status.success() && out.is_file(),
        "componentize-py failed to build {module} ({}):\n{}",
        output.status,
        output_text(&output)
    );
    out.to_path_buf()
}
