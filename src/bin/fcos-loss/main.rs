//! `fcos-loss`: the demo (no arguments, or `demo`) and the `check`, `grad`,
//! `targets`, `shaders`, `capture` and `bench` commands, one file each; `common` holds what they share.
//!
//! Exit codes: 0 ok, 1 results outside the tolerances, 2 an error (bad arguments,
//! an unreadable case file, no adapter, a batch the device cannot take). Every
//! error the CLI itself prints is one line on stderr starting with
//! `fcos-loss: error: `, so it cannot be mistaken for a driver's own messages.

mod bench;
mod capture;
mod check;
mod common;
mod demo;
mod grad;
mod shaders;
mod targets;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use common::{print_error, Failure};

/// The FCOS loss (focal + centerness BCE + IoU/GIoU) on the GPU through wgpu.
///
/// With no command, runs the demo on a built-in COCO-shaped batch.
#[derive(Parser, Debug)]
#[command(name = "fcos-loss", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Demo on a deterministic synthetic batch: GPU and CPU losses, their difference, GPU call time.
    Demo(demo::DemoArgs),
    /// Compute a case file (docs/contract.md §5 tensor names) on the GPU and the CPU reference; compare with its expected values.
    Check(check::CheckArgs),
    /// Gradients of a case file on the GPU, written to a safetensors file; compared with the CPU reference and expected gradients.
    Grad(grad::GradArgs),
    /// Targets assigned on the GPU from a case file's gt_boxes / gt_classes, written to a safetensors file and compared with the file's own targets.
    Targets(targets::TargetsArgs),
    /// Every shader variant the engine may build, written as WGSL files with a manifest (entry points, override constants, features, bindings); no GPU needed.
    Shaders(shaders::ShadersArgs),
    /// One call on a case file described for replay elsewhere (pipelines, buffers and their contents, dispatches, where the results lie, the expected values): `tests/browser/replay.mjs` replays it in Chromium's WebGPU.
    Capture(capture::CaptureArgs),
    /// Kernel and call times on this adapter beside the memory roofline and the CPU reference.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    quiet_broken_pipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        None => demo::run(&demo::DemoArgs::default()),
        Some(Command::Demo(a)) => demo::run(&a),
        Some(Command::Check(a)) => check::run(&a),
        Some(Command::Grad(a)) => grad::run(&a),
        Some(Command::Bench(a)) => bench::run(&a),
        Some(Command::Targets(a)) => targets::run(&a),
        Some(Command::Shaders(a)) => shaders::run(&a),
        Some(Command::Capture(a)) => capture::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Mismatch) => ExitCode::from(1),
        Err(Failure::Error(e)) => {
            print_error(&e.to_string());
            ExitCode::from(2)
        }
    }
}

/// A reader that stops early (`fcos-loss check ... --json | head -c 100`) ends the
/// command the way it ends other Unix tools, by SIGPIPE, instead of a panic in
/// `println!`: Rust starts programs with SIGPIPE ignored.
fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: called first in main, before any thread starts; restoring the default
    // action of a signal has no other effect on the program.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Help and version are clap's to print (stdout, exit 0). A usage error is clap's
/// message with its first line under the CLI's error prefix, then the rest of it
/// (the usage and the hint) as clap writes it; exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    let text = e.render().to_string();
    match text.strip_prefix("error: ") {
        Some(rest) if e.use_stderr() => {
            let (first, more) = rest.split_once('\n').unwrap_or((rest, ""));
            print_error(first);
            eprint!("{more}");
            ExitCode::from(2)
        }
        _ => e.exit(),
    }
}
