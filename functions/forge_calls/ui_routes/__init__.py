"""The UI routes (``/api/...``): every module in this package that defines ``router`` is served.

To add routes, drop a module here with a ``Router`` named ``router`` (``from forge_remote import
Router``; see README, "Write your own route"): there is no list to edit. A route reads the verified
call and its Confluence clients with ``ui_call(router)``, and its inputs, validated against its
``@accepts``, as ``ui_call(router).inputs``; a route without ``@accepts`` takes none.
"""
