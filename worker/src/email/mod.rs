//! Emails the worker sends on behalf of the identity flows: what they say ([`templates`], with
//! links from [`Links`]) and how they leave ([`Mailer`]: SMTP or an outbox directory, with a
//! commit hook that makes delivery exactly-once across worker crashes). Names and addresses
//! come from the log, as users typed them: building an email refuses or leaves out what cannot
//! be sent safely, and never panics ([`usable_display_name`], [`OutgoingEmail::build`]).

mod display_name;
mod links;
mod outbox;
mod smtp;
pub mod templates;
pub mod transport;

pub use display_name::usable_display_name;
pub use links::{Links, LinksError};
pub use templates::{EmailKind, RenderError, Rendered, render};
pub use transport::{
    BuildError, BuiltEmail, Delivered, HandOver, Mailer, MailerConfigError, OutgoingEmail,
    SendError, sender_domain,
};
