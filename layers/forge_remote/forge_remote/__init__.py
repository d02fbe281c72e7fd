"""forge_remote: the shared library of the Forge remote backend (packaged as a Lambda layer).

One module per concern: ``fit`` (Forge Invocation Token verification), ``tokens`` (the token
store), ``installations`` (installation registry), ``payloads`` (Forge event parsing),
``confluence`` (Confluence client), ``cql`` (CQL builder), ``jobs`` (job contract),
``config`` (settings). Import what you use; nothing heavy is imported here.
"""

__version__ = "0.1.0"
