"""The command lines of the jobs that drive several packages: ``infer`` (split inference, which ``--plan`` and
``--elastic`` hand to decnn.plan and decnn.serve) and ``models`` (the model table, whose per-device columns come
from decnn.partition). They stand above what they drive; every other job's command line lives in its own package
(``decnn/<package>/__main__.py`` or the module ``decnn.cli`` names), which it alone drives.
"""
