"""A minimal Django project whose ``beatapp`` starts beatleader's beat in ``AppConfig.ready()``."""
