"""The dashboard's pages: one module per page family, each a router of thin routes
(parse, authorise, call the operations API, render)."""
