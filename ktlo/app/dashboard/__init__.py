"""The status page and operator dashboard (SPEC §10): server-rendered HTML with inline SVG,
badges and the same data as JSON.

Each section gathers its data in its own module (`checks`, `backups`, `incidents`,
`domains` for the patching and DR domains when they are installed) into the models of
`model`; `pages` assembles them, `render` turns them into HTML (Jinja2 templates shipped in
`templates/`), `web` serves them beside the webhook receiver. See docs/dashboard.md.
"""
