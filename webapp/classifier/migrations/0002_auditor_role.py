"""The permission to read every user's records, and the "auditor" group holding it."""
from django.contrib.auth.management import create_permissions
from django.db import migrations

AUDITOR_GROUP = "auditor"


def add_auditor_group(apps, schema_editor):
    app_config = apps.get_app_config("classifier")
    app_config.models_module = True  # permissions are otherwise made only after all migrations
    create_permissions(app_config, apps=apps, verbosity=0, using=schema_editor.connection.alias)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.using(schema_editor.connection.alias).get_or_create(name=AUDITOR_GROUP)
    group.permissions.add(Permission.objects.using(schema_editor.connection.alias).get(
        codename="view_all_classifications", content_type__app_label="classifier"))


def remove_auditor_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.using(schema_editor.connection.alias).filter(
        name=AUDITOR_GROUP).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("classifier", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="classification",
            options={"ordering": ["-created", "-id"],
                     "permissions": [("view_all_classifications",
                                      "Can read every user's classifications")]},
        ),
        migrations.RunPython(add_auditor_group, remove_auditor_group),
    ]
