//! `sensegate admin …`: run the control plane alone, or manage tenants, admin
//! keys and signing keys directly on its database.

use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use sensegate_admin::{Admin, AdminConfig, DiscardSink};

use crate::serve::{AdminServeArgs, NodeArgs, StoreArgs, TokenArgs};

#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Run the admin API, token endpoint and permission feed (brokers follow it).
    Serve(AdminServeArgs),
    /// Manage tenants.
    Tenant {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage admin API keys.
    Key {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Manage the token signing key.
    SigningKey {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: SigningKeyCommand,
    },
}

/// Which database to work on (the same as the server's).
#[derive(Debug, clap::Args)]
struct DbArgs {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    token: TokenArgs,
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant.
    Create {
        /// Tenant name ([A-Za-z0-9._-], 1–64 characters).
        name: String,
    },
    /// List tenants.
    List,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create an admin key for a tenant; prints it once.
    Create {
        /// The tenant the key acts for.
        #[arg(long)]
        tenant: String,
    },
    /// List admin keys (never the keys themselves).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke an admin key by id.
    Revoke {
        /// Key id, as listed.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum SigningKeyCommand {
    /// Make a new signing key current; tokens signed with the previous one
    /// stay valid until they expire.
    Rotate,
}

async fn open(db: &DbArgs) -> anyhow::Result<Admin> {
    let (admin, generated) = Admin::open(
        AdminConfig {
            database_url: db.store.existing(&db.node.data_dir)?,
            issuer: "sensegate-cli".into(),
            token_ttl: Duration::from_secs(db.token.token_ttl),
            bootstrap_admin_key: std::env::var("SENSEGATE_BOOTSTRAP_ADMIN_KEY").ok(),
            // The CLI serves no tokens and feeds no broker: nothing to poll.
            feed_poll: Duration::ZERO,
        },
        Arc::new(DiscardSink),
    )
    .await?;
    if let Some(key) = generated {
        println!("admin key for tenant default (shown once, store it now): {key}");
    }
    Ok(admin)
}

pub(crate) async fn run(args: AdminArgs) -> anyhow::Result<()> {
    match args.command {
        AdminCommand::Serve(a) => crate::serve::run_admin(a).await,
        AdminCommand::Tenant { db, command } => {
            let admin = open(&db).await?;
            match command {
                TenantCommand::Create { name } => {
                    let t = admin.create_tenant(&name).await?;
                    println!("created tenant {}", t.id);
                }
                TenantCommand::List => {
                    for t in admin.list_tenants().await? {
                        println!("{}\t{}", t.id, t.created_at);
                    }
                }
            }
            Ok(())
        }
        AdminCommand::Key { db, command } => {
            let admin = open(&db).await?;
            match command {
                KeyCommand::Create { tenant } => {
                    let key = admin.create_admin_key(&tenant).await?;
                    println!("{key}");
                    eprintln!("admin key for tenant {tenant}: shown once, only its hash is stored");
                }
                KeyCommand::List { tenant } => {
                    for k in admin.list_admin_keys(tenant.as_deref()).await? {
                        println!(
                            "{}\t{}\t{}…\t{}\t{}",
                            k.id,
                            k.tenant,
                            k.hint,
                            k.created_at,
                            k.revoked_at.as_deref().unwrap_or("active")
                        );
                    }
                }
                KeyCommand::Revoke { id } => {
                    admin.revoke_admin_key(&id).await?;
                    println!("revoked {id}");
                }
            }
            Ok(())
        }
        AdminCommand::SigningKey { db, command } => {
            let admin = open(&db).await?;
            match command {
                SigningKeyCommand::Rotate => {
                    let kid = admin.rotate_signing_key().await?;
                    println!("new signing key {kid}");
                }
            }
            Ok(())
        }
    }
}
