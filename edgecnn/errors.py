"""User errors: things the user can fix. The CLI prints them as one line (traceback only with --debug)."""


class UserError(Exception):
    """A problem with the user's input: say what is wrong and what to do."""


class DatasetError(UserError):
    pass


class CheckpointError(UserError):
    pass
