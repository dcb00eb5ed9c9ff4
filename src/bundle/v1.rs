//! Format version 1's payload, read so that a device upgraded to this gatelet keeps serving the
//! version-1 bundle it holds until the next one arrives. Nothing writes version 1 any more.
//!
//! The shapes below are version 1's wire order (`bundle-format/SPEC.md`, "Version 1"); each
//! converts into today's [`Manifest`] with the meaning version 1 had: every scope of a
//! requirement needed, bearer tokens only, no API keys, Ed25519 keys, no default subscription
//! tier.

use serde::Deserialize;

use super::model::{self, Manifest, ScopeRule};

#[derive(Deserialize)]
pub(super) struct ManifestV1 {
    label: String,
    serial: u64,
    created_at: u64,
    issuers: Vec<IssuerV1>,
    policies: Vec<model::Policy>,
    apis: Vec<ApiV1>,
    revoked_jti: Vec<String>,
}

#[derive(Deserialize)]
struct IssuerV1 {
    name: String,
    issuer: String,
    audience: Option<String>,
    keys: Vec<IssuerKeyV1>,
    validate_subscription: bool,
}

#[derive(Deserialize)]
struct IssuerKeyV1 {
    kid: String,
    public_key: [u8; 32],
}

#[derive(Deserialize)]
struct ApiV1 {
    name: String,
    version: String,
    context: String,
    tier: Option<String>,
    disable_security: bool,
    auth_header: Option<String>,
    production: Option<EndpointsV1>,
    sandbox: Option<EndpointsV1>,
    cors: Option<CorsV1>,
    operations: Vec<OperationV1>,
}

#[derive(Deserialize)]
struct OperationV1 {
    method: model::Method,
    path: String,
    tier: Option<String>,
    disable_security: bool,
    scopes: Vec<Vec<String>>,
    production: Option<EndpointsV1>,
    sandbox: Option<EndpointsV1>,
}

#[derive(Deserialize)]
struct EndpointsV1 {
    kind: model::EndpointKind,
    urls: Vec<model::HttpUrl>,
}

#[derive(Deserialize)]
struct CorsV1 {
    allow_origins: Vec<String>,
    allow_headers: Vec<String>,
    allow_methods: Vec<String>,
    allow_credentials: bool,
}

fn endpoints(e: Option<EndpointsV1>) -> Option<model::Endpoints> {
    e.map(|e| model::Endpoints { kind: e.kind, urls: e.urls, ..model::Endpoints::default() })
}

impl From<ManifestV1> for Manifest {
    fn from(m: ManifestV1) -> Manifest {
        Manifest {
            label: m.label,
            serial: m.serial,
            created_at: m.created_at,
            issuers: m
                .issuers
                .into_iter()
                .map(|i| model::Issuer {
                    name: i.name,
                    issuer: i.issuer,
                    audience: i.audience,
                    keys: i
                        .keys
                        .into_iter()
                        .map(|k| model::IssuerKey::ed25519(k.kid, k.public_key))
                        .collect(),
                    validate_subscription: i.validate_subscription,
                    algorithms: Vec::new(),
                    tokens: true,
                    api_keys: false,
                })
                .collect(),
            policies: m.policies,
            apis: m
                .apis
                .into_iter()
                .map(|a| model::Api {
                    name: a.name,
                    version: a.version,
                    context: a.context,
                    tier: a.tier,
                    disable_security: a.disable_security,
                    auth_header: a.auth_header,
                    production: endpoints(a.production),
                    sandbox: endpoints(a.sandbox),
                    cors: a.cors.map(|c| model::Cors {
                        allow_origins: c.allow_origins,
                        allow_headers: c.allow_headers,
                        allow_methods: c.allow_methods,
                        allow_credentials: c.allow_credentials,
                        expose_headers: Vec::new(),
                    }),
                    operations: a
                        .operations
                        .into_iter()
                        .map(|o| model::Operation {
                            method: o.method,
                            path: o.path,
                            tier: o.tier,
                            disable_security: o.disable_security,
                            scopes: o.scopes,
                            production: endpoints(o.production),
                            sandbox: endpoints(o.sandbox),
                            bearer: true,
                            api_key: false,
                        })
                        .collect(),
                    https_only: false,
                    api_key_locations: Vec::new(),
                })
                .collect(),
            revoked_jti: m.revoked_jti,
            scope_rule: ScopeRule::AllOf,
            default_subscription_tier: None,
        }
    }
}
