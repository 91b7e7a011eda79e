//! The C ABI from C and C++: builds `liboxccl` (crate `oxccl-ffi`), compiles the C test
//! programs with `-Wall -Wextra -Werror -pedantic` (and again with AddressSanitizer and
//! UndefinedBehaviorSanitizer), and runs them as 2, 3 and 4 ranks under `oxrun`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `target/<profile>` directory this test runs from, with `liboxccl` built in it.
fn libdir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf(); // target/<profile>
        let profile = dir.file_name().unwrap().to_str().unwrap().to_string();
        let target = dir.parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "oxccl-ffi", "--target-dir"]).arg(target).current_dir(root());
        if profile == "release" {
            cmd.arg("--release");
        }
        let st = cmd.status().unwrap();
        assert!(st.success(), "building liboxccl failed");
        assert!(dir.join("liboxccl.so").exists() && dir.join("liboxccl.a").exists());
        dir
    })
}

fn compile(src: &str, sanitize: bool) -> PathBuf {
    let cpp = src.ends_with(".cpp");
    let stem = Path::new(src).file_stem().unwrap().to_str().unwrap();
    let out = libdir().join(format!("ctest-{stem}{}", if sanitize { "-san" } else { "" }));
    let mut cmd = Command::new(if cpp { "c++" } else { "cc" });
    cmd.arg(if cpp { "-std=c++17" } else { "-std=c11" })
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(root().join(src));
    if sanitize {
        cmd.args(["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]);
    }
    cmd.arg(format!("-L{}", libdir().display()))
        .arg(format!("-Wl,-rpath,{}", libdir().display()))
        .arg("-loxccl")
        .arg("-o")
        .arg(&out);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "compiling {src}: {}", String::from_utf8_lossy(&o.stderr));
    out
}

fn run(ranks: usize, exe: &Path, marker: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_oxrun"))
        .args(["-n", &ranks.to_string(), "--tag-output"])
        .arg(exe)
        .env("OXCCL_TIMEOUT_MS", "60000")
        // The Rust runtime keeps a few process-lifetime allocations (the store server of
        // oxcclGetUniqueId, thread-locals) that LeakSanitizer would list; everything else of
        // ASan and UBSan stays on and fatal.
        .env("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1")
        .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{} with {ranks} ranks:\n{text}", exe.display());
    assert_eq!(text.matches(marker).count(), ranks, "{} with {ranks} ranks:\n{text}", exe.display());
}

#[test]
fn c_collectives_every_element_checked() {
    let exe = compile("tests/c/collectives.c", false);
    for n in [2, 3, 4] {
        run(n, &exe, "C-COLLECTIVES-OK");
    }
}

#[test]
fn c_collectives_under_sanitizers() {
    let exe = compile("tests/c/collectives.c", true);
    for n in [2, 3, 4] {
        run(n, &exe, "C-COLLECTIVES-OK");
    }
}

#[test]
fn c_bad_inputs_return_exact_codes() {
    run(2, &compile("tests/c/bad_inputs.c", false), "C-BAD-INPUTS-OK");
    run(2, &compile("tests/c/bad_inputs.c", true), "C-BAD-INPUTS-OK");
}

#[test]
fn cpp_uses_the_header() {
    run(3, &compile("tests/c/cpp_smoke.cpp", false), "CPP-OK");
}

#[test]
fn examples_build_with_their_makefile_and_run() {
    let o = Command::new("make")
        .arg("-C")
        .arg(root().join("examples"))
        .arg(format!("LIBDIR={}", libdir().display()))
        .arg("-B")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_oxrun"))
        .args(["-n", "4"])
        .arg(root().join("examples/c/allreduce"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("on 4 ranks: 0 wrong"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_oxrun"))
        .args(["-n", "4"])
        .arg(root().join("examples/cpp/allreduce"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("mean over 4 ranks: 2.5 (0 wrong)"), "{text}");
}
