//! The development account: `serve` on embedded defaults, on a store that holds no account,
//! makes one account (with a secret key, a publishable key, an agent with one device, a trunk
//! to a carrier on `127.0.0.1:5080` and a number) so that a newcomer can sign in to the
//! console and place a call at once. Its keys are printed once, on standard output, never
//! in the log; on the next start the store has the account and nothing is printed.

use rand::RngCore;
use store::{Provisioning, Store};

/// What the newcomer needs to hear, once.
pub struct DevelopmentAccount {
    pub account_id: String,
    pub secret_key: String,
    pub publishable_key: String,
    pub webhook_secret: String,
    pub user_id: String,
    pub device: String,
    pub device_password: String,
}

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

impl DevelopmentAccount {
    /// New random keys and ids.
    pub fn new() -> DevelopmentAccount {
        DevelopmentAccount {
            account_id: store::TypeId::new(store::provision::ACCOUNT_PREFIX).to_string(),
            secret_key: format!("sk_dev_{}", random_hex(24)),
            publishable_key: format!("pk_dev_{}", random_hex(16)),
            webhook_secret: format!("whsec_dev_{}", random_hex(24)),
            user_id: store::TypeId::new(store::provision::USER_PREFIX).to_string(),
            device: "agent-desk".to_owned(),
            device_password: random_hex(8),
        }
    }

    /// The account as provisioning tables.
    pub fn provisioning(&self) -> Result<Provisioning, toml::de::Error> {
        let text = format!(
            r#"
[[accounts]]
id = "{acct}"
name = "Development"
region = "US"
api_keys = [{{ key = "ak_dev", secret = "{sk}" }}]
publishable_keys = ["{pk}"]
webhook_secret = "{wh}"
allowed_prefixes = ["+1"]

[[users]]
id = "{user}"
account = "{acct}"
name = "Dev Agent"
extension = "1001"
devices = [{{ username = "{dev}", password = "{pw}" }}]

[[trunks]]
name = "dev-carrier"
account = "{acct}"
address = "127.0.0.1:5080"
transport = "udp"

[[numbers]]
number = "+14155550199"
account = "{acct}"
owner = "{user}"
"#,
            acct = self.account_id,
            sk = self.secret_key,
            pk = self.publishable_key,
            wh = self.webhook_secret,
            user = self.user_id,
            dev = self.device,
            pw = self.device_password,
        );
        toml::from_str(&text)
    }

    /// Makes the account when the store holds none; `None` when it holds one already.
    pub async fn create_if_empty(
        store: &dyn Store,
        domain: &str,
    ) -> Result<Option<DevelopmentAccount>, store::StoreError> {
        if !store.list_accounts().await?.is_empty() {
            return Ok(None);
        }
        let dev = DevelopmentAccount::new();
        let prov = dev.provisioning().map_err(|e| store::StoreError::Invalid {
            field: "development account",
            reason: e.to_string(),
        })?;
        store.apply_provisioning(&prov, domain).await?;
        Ok(Some(dev))
    }

    /// The lines printed once on standard output (never logged).
    pub fn announcement(&self, api: std::net::SocketAddr, sip: Option<String>) -> String {
        let sip = sip.unwrap_or_else(|| "127.0.0.1:5060".to_owned());
        format!(
            "dialbridge: created a development account on this empty store; its keys are shown only now:\n\
             dialbridge:   console          http://{api}/console  (sign in with the secret key)\n\
             dialbridge:   secret key       {sk}\n\
             dialbridge:   publishable key  {pk}\n\
             dialbridge:   webhook secret   {wh}\n\
             dialbridge:   account          {acct}\n\
             dialbridge:   agent            Dev Agent, extension 1001, {user}\n\
             dialbridge:   agent's phone    dialbridge phone --register {dev}:{pw}@{sip} --answer\n\
             dialbridge:   carrier          dialbridge phone --listen udp:127.0.0.1:5080 --answer   (the trunk dev-carrier)",
            sk = self.secret_key,
            pk = self.publishable_key,
            wh = self.webhook_secret,
            acct = self.account_id,
            user = self.user_id,
            dev = self.device,
            pw = self.device_password,
        )
    }
}

impl Default for DevelopmentAccount {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_development_account_is_valid_provisioning() {
        let dev = DevelopmentAccount::new();
        let prov = dev.provisioning().expect("parses");
        prov.validate().expect("valid");
        assert_eq!(
            prov.accounts[0].publishable_keys,
            vec![dev.publishable_key.clone()]
        );
        let other = DevelopmentAccount::new();
        assert_ne!(dev.secret_key, other.secret_key, "keys are random");
        let text = dev.announcement(([127, 0, 0, 1], 8080).into(), None);
        assert!(text.contains("http://127.0.0.1:8080/console") && text.contains(&dev.secret_key));
    }
}
