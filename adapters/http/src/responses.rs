//! Responses several routes share, defined once: the OpenAPI document
//! refers to them (`#/components/responses/...`).
#![allow(dead_code)] // The fields exist for their schemas.

use utoipa::ToResponse;
use utoipa::openapi::{Content, RefOr, Response, ResponseBuilder};

use crate::schema::{ErrorBody, Pending};

/// The media types an image is served with.
pub(crate) const IMAGE_TYPES: [&str; 6] = [
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
];

/// `200`: the bytes of an image, with its media type.
pub(crate) struct Image;

impl<'r> ToResponse<'r> for Image {
    fn response() -> (&'r str, RefOr<Response>) {
        let mut response = ResponseBuilder::new().description(
            "The image's bytes, with its media type (a result keeps the format the spec asked for)",
        );
        for media_type in IMAGE_TYPES {
            response = response.content(media_type, Content::default());
        }
        ("Image", response.build().into())
    }
}

/// `404`: no such job for this tenant.
#[derive(ToResponse)]
#[response(description = "No such job for this tenant (or not a job id)")]
pub(crate) struct NotFound(ErrorBody);

/// `202`: the job is not finished, or not archived, yet.
#[derive(ToResponse)]
#[response(
    description = "Not finished (or, for the original, not archived) yet",
    headers(("Retry-After" = u32, description = "Seconds to wait"))
)]
pub(crate) struct NotReady(Pending);

/// `503`: a backend is down, or too many jobs are in flight.
#[derive(ToResponse)]
#[response(
    description = "A backend is down, or too many jobs are in flight; retry",
    headers(("Retry-After" = u32, description = "Seconds to wait"))
)]
pub(crate) struct Unavailable(ErrorBody);

/// `401`: no credentials, or a key that is unknown, expired or revoked.
#[derive(ToResponse)]
#[response(
    description = "No valid credentials: `missing_key`, `invalid_key`, `key_expired`, `key_revoked` (keys), `missing_tenant` (trusted header)",
    headers(("WWW-Authenticate" = String, description = "`Bearer`"))
)]
pub(crate) struct Unauthorized(ErrorBody);

/// `403`: the credentials lack the scope, or a signed link is bad.
#[derive(ToResponse)]
#[response(
    description = "`forbidden` (the key lacks the scope), `wrong_tenant` (X-Tenant is not the key's), `invalid_link` or `link_expired` (a signed link)"
)]
pub(crate) struct Forbidden(ErrorBody);
