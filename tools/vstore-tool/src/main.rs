//! `vstore-tool`: command-line access to vstore stores (work in progress).
use clap::Parser;

/// Build, inspect and verify vstore stores.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Print the schema parsed from a `space@version:dim:dtype` spec and exit.
    #[arg(long)]
    embedding: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    if let Some(spec) = cli.embedding {
        let parts: Vec<&str> = spec.split(':').collect();
        let parsed = (|| -> vstore::Result<vstore::EmbeddingDef> {
            let [key, dim, dtype] = parts[..] else {
                return Err(vstore::Error::InvalidInput(format!(
                    "{spec:?}: expected space@version:dim:dtype"
                )));
            };
            let (space, version) = vstore::schema::parse_key(key)?;
            let dim = dim
                .parse()
                .map_err(|_| vstore::Error::InvalidInput(format!("bad dimension {dim:?}")))?;
            let def = vstore::EmbeddingDef::new(space, version, dim, vstore::Dtype::parse(dtype)?);
            vstore::Schema {
                embeddings: vec![def.clone()],
                ..Default::default()
            }
            .validate()?;
            Ok(def)
        })();
        match parsed {
            Ok(def) => println!(
                "{} dim={} dtype={} row_stride={}",
                def.key(),
                def.dim,
                def.dtype.name(),
                def.dtype.row_stride(def.dim)
            ),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        }
    } else {
        println!("vstore-tool: store commands are not implemented yet (see the open issues)");
    }
}
