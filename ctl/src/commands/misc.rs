//! The small commands: `version`, `auth whoami` (and `create`, in `create.rs`).

use crate::{
    Context, Io,
    cli::{AuthCommand, CreateCommand},
    error::Result,
    table::render,
};

pub async fn create(ctx: Context<'_>, command: &CreateCommand, io: &mut Io<'_>) -> Result<()> {
    super::create::run(ctx, command, io).await
}

/// The client's version (there is no server version call to ask).
pub fn version(io: &mut Io<'_>) -> Result<()> {
    writeln!(io.out, "Client Version: v{}", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

pub async fn auth(ctx: Context<'_>, command: &AuthCommand, io: &mut Io<'_>) -> Result<()> {
    match command {
        AuthCommand::Whoami => {
            let (_, client) = ctx.connect().await?;
            let (user, groups) = client.who_am_i().await?;
            io.out.write_all(whoami_table(&user, &groups).as_bytes())?;
        }
    }
    Ok(())
}

/// kubectl's `auth whoami` table.
fn whoami_table(user: &str, groups: &[String]) -> String {
    let rows = vec![
        vec!["Username".to_owned(), user.to_owned()],
        vec!["Groups".to_owned(), format!("[{}]", groups.join(" "))],
    ];
    render(&["ATTRIBUTE".to_owned(), "VALUE".to_owned()], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whoami_prints_user_and_groups() {
        assert_eq!(
            whoami_table("admin", &["skiff:admins".to_owned()]),
            "ATTRIBUTE   VALUE\nUsername    admin\nGroups      [skiff:admins]\n"
        );
    }
}
