"""Training stages, one module per job, on the shared loop (``umt.train.loop``).

Which stages exist, and what each is, is the stage catalogue's (``umt.catalogue``); this
package holds their code.
"""
