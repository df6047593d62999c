//! Emails the worker sends on behalf of the identity flows: what they say ([`templates`], with
//! links from [`Links`]) and how they leave ([`Mailer`]: SMTP or an outbox directory, with a
//! commit hook that makes delivery exactly-once across worker crashes).

mod links;
mod outbox;
mod smtp;
pub mod templates;
pub mod transport;

pub use links::{Links, LinksError};
pub use templates::{EmailKind, RenderError, Rendered, render};
pub use transport::{Delivered, HandOver, Mailer, MailerConfigError, OutgoingEmail, SendError};
