"""Lifecycle webhooks to subscribers (Standard Webhooks): pure pieces (`payload`,
`signing`, `retry`, `targets`, `book`) and the delivery service's I/O (`service`)."""
