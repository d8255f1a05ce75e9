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

/// Builds `module` (a Python module in `module_dir`, which may import the repository's plugin
/// SDK, `plugins/sdk/python`) against `world` of the repository's `wit/plugin.wit` into `out`,
/// and returns `out`. Panics with componentize-py's output if the build fails, or with how to
/// install it if it is missing.
pub fn componentize_py(world: &str, module_dir: &Path, module: &str, out: &Path) -> PathBuf {
    let sdk = repo_root().join("plugins/sdk/python");
    build(
        &repo_root().join("wit"),
        world,
        &[module_dir, &sdk],
        module,
        out,
    )
}

/// [`componentize_py`] against the WIT in `wit` (a scaffolded project's own `wit/`), with
/// `module_dir` (the project, holding its vendored SDK) as the only Python path.
pub fn componentize_py_with(
    wit: &Path,
    world: &str,
    module_dir: &Path,
    module: &str,
    out: &Path,
) -> PathBuf {
    build(wit, world, &[module_dir], module, out)
}

fn build(wit: &Path, world: &str, python_path: &[&Path], module: &str, out: &Path) -> PathBuf {
    let mut cmd = componentize_py_command();
    cmd.arg("-d").arg(wit).args(["-w", world, "componentize"]);
    for dir in python_path {
        cmd.arg("-p").arg(dir);
    }
    let output = cmd
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
