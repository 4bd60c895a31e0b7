{#- A group's rows as one array of records, sorted by their fields in the order given (so list the sort keys
    first); `record_field` reads one field back as an array. Sorting one array of records once costs less than
    one ordered aggregate per column, which DuckDB sorts separately. `fields` is a list of (name, expression). -#}
{% macro sorted_records(fields) -%}
    {{ return(adapter.dispatch('sorted_records', 'postmodern')(fields)) }}
{%- endmacro %}

{% macro default__sorted_records(fields) -%}
    list_sort(list(struct_pack(
        {%- for name, expression in fields %}{{ name }} := {{ expression }}{{ ", " if not loop.last }}{% endfor -%}
    )))
{%- endmacro %}

{% macro snowflake__sorted_records(fields) -%}
    array_agg(object_construct_keep_null(
        {%- for name, expression in fields %}'{{ name }}', {{ expression }}{{ ", " if not loop.last }}{% endfor -%}
    )) within group (order by
        {%- for name, expression in fields %} {{ expression }}{{ "," if not loop.last }}{% endfor -%}
    )
{%- endmacro %}

{#- One field of every record of an array made by `sorted_records`, in the same order, cast to `type`. -#}
{% macro record_field(records, field, type) -%}
    {{ return(adapter.dispatch('record_field', 'postmodern')(records, field, type)) }}
{%- endmacro %}

{% macro default__record_field(records, field, type) -%}
    list_transform({{ records }}, lambda record: cast(record.{{ field }} as {{ type }}))
{%- endmacro %}

{% macro snowflake__record_field(records, field, type) -%}
    transform({{ records }}, record object -> record:{{ field }}::{{ type }})
{%- endmacro %}
