//! `hearth pull org/name[:QUANT]`: download a GGUF into the Hugging Face cache.

use anyhow::Result;
use hearth_server::hub::{fetch, HubRef};

use crate::cli::PullArgs;

pub fn run(args: PullArgs) -> Result<()> {
    let reference = HubRef::parse(&args.model).map_err(anyhow::Error::msg)?;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let path = fetch(&reference, progress).map_err(anyhow::Error::msg)?;
    println!("{}", path.display());
    eprintln!("serve it with: hearth serve --model {reference}");
    Ok(())
}
